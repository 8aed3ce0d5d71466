"""What TensorBoard shows beyond the loss: throughput, gradient norm, and ``hp_metric`` = the best validation score.

- :class:`Throughput` logs ``throughput/pairs_per_sec`` (training rows: pairs or triplets, sentences for SimCSE,
  token blocks for MNTP) and ``throughput/tokens_per_sec`` (non-padding tokens of every text field) over a window of
  batches, wall time including data loading.
- :class:`GradientNorm` logs ``train/grad_norm``, the total 2-norm of the gradients before clipping (Lightning's
  ``grad_norm``); a rising norm warns of divergence before the loss does.
- :class:`BestScore` logs the best value of a validation metric as ``hp_metric``, the metric TensorBoard's HParams
  tab compares runs by (the logger writes -1 there at the start).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import grad_norm


def batch_size_and_tokens(batch: Any) -> tuple[int, int]:
    """Rows and non-padding tokens of a lightembed batch: every ``Features`` field counts its ``attention_mask``
    (a pair batch's anchor and positive both), the first field gives the row count; a flat MNTP batch is one field."""
    fields = [v for v in batch.values() if isinstance(v, Mapping) and "attention_mask" in v]
    if not fields and "attention_mask" in batch:
        fields = [batch]
    if not fields:
        return 0, 0
    tokens = sum(int(f["attention_mask"].sum()) for f in fields)
    return int(fields[0]["attention_mask"].shape[0]), tokens


class Throughput(L.Callback):
    """Training rows and tokens per second over the last ``window`` batches (logged every step, averaged by window).

    Args:
        window: batches the rates are measured over.
    """

    def __init__(self, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"Throughput window must be >= 1, got {window}")
        self.window = window
        self._ends: deque[tuple[float, int, int]] = deque(maxlen=window + 1)

    def _restart_window(self) -> None:
        """Measure from now: validation and epoch boundaries are not training time."""
        self._ends.clear()
        self._ends.append((time.perf_counter(), 0, 0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a fit resumed mid-epoch starts here: Lightning does not call on_train_epoch_start for the epoch it resumes
        self._restart_window()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restart_window()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restart_window()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        rows, tokens = batch_size_and_tokens(batch)
        self._ends.append((time.perf_counter(), rows, tokens))
        start = self._ends[0][0]
        done = list(self._ends)[1:]  # batches finished since `start`
        seconds = done[-1][0] - start
        if seconds <= 0:
            return
        pl_module.log("throughput/pairs_per_sec", sum(r for _, r, _ in done) / seconds, on_step=True, on_epoch=False)
        pl_module.log("throughput/tokens_per_sec", sum(t for _, _, t in done) / seconds, on_step=True, on_epoch=False)


class GradientNorm(L.Callback):
    """The total gradient 2-norm of the trainable parameters before clipping, as ``train/grad_norm`` (per rank
    under FSDP, whose parameters are sharded)."""

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        norms = grad_norm(pl_module, norm_type=2)
        if "grad_2.0_norm_total" in norms:
            pl_module.log("train/grad_norm", norms["grad_2.0_norm_total"], on_step=True, on_epoch=False)


class BestScore(L.Callback):
    """Log the best value so far of ``monitor`` as ``hp_metric`` after every validation (not the sanity check).

    Args:
        monitor: the validation metric, as the checkpoint callback's ``monitor``.
        mode: ``max`` or ``min``: which value is best.
    """

    def __init__(self, monitor: str = "val/spearman_mean", mode: Literal["max", "min"] = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"BestScore mode must be 'max' or 'min', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best = value
        for logger in trainer.loggers:
            logger.log_metrics({"hp_metric": self.best}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
