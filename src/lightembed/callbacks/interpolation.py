"""Weight-space interpolation with the starting point (WiSE-FT: "Robust fine-tuning of zero-shot models", Mitchell
Wortsman et al., 2022).

A fine-tuning run ends with ``θ0 + α·(θ − θ0)``: ``θ0`` are the trainable weights when ``fit`` started, ``θ`` the ones
training reached, ``α`` in ``[0, 1]`` (1 = plain fine-tuning, 0 = the starting model). Averaging in weight space keeps
part of what a strong pretrained encoder knew beyond the fine-tuning set. Choose ``α`` on a validation set, and check
the gain on held-out data: a small fine-tuning set can make validation favour an ``α`` that does not carry over
(``benchmarks/stsb_angle_sweep.py --wise`` and ``stsb_angle.py`` measure both; results in ``benchmarks/results/``).

Training itself is unchanged: the optimiser keeps stepping ``θ``. The interpolated weights are what the run shows:

* every validation during ``fit`` scores them (so a ``ModelCheckpoint`` monitoring a validation metric ranks them);
* every checkpoint holds them in ``state_dict`` (so ``--ckpt_path``, ``ExportCallback`` and ``lightembed evaluate``
  use them), with the raw ``θ`` kept under ``wise_current`` so that resuming ``fit`` continues training ``θ``;
* when training ends the module is left holding them (``trainer.test``, ``encode`` and the export see them).

LoRA: an adapter's delta is ``B·A`` with ``B`` starting at zero, so interpolating ``B`` alone and keeping the trained
``A`` gives exactly ``α·B·A``, the interpolation of the merged weights. An adapter that did not start at zero (one
continued with ``init_from``) has no such exact form and is refused.

Only trainable parameters are copied (a second copy of them, plus a third in each checkpoint); frozen weights and
buffers are untouched.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

CURRENT_KEY = "wise_current"


def _is_lora_a(name: str) -> bool:
    return ".lora_A." in name or ".lora_embedding_A." in name


def _lora_b_name(a_name: str) -> str:
    return a_name.replace(".lora_A.", ".lora_B.").replace(".lora_embedding_A.", ".lora_embedding_B.")


def interpolate_weight(name: str, start: Tensor, end: Tensor, alpha: float) -> Tensor:
    """``start + alpha·(end − start)`` for the weight ``name``; a LoRA ``A`` stays at ``end`` (its ``B`` scales)."""
    if _is_lora_a(name):
        return end.detach().clone()  # B carries the interpolation: (αB)·A = α·(B·A) when B started at zero
    return torch.lerp(start.to(end.device, end.dtype), end.detach(), alpha)


def trainable_weights(module: nn.Module) -> dict[str, Tensor]:
    """Detached copies of ``module``'s trainable parameters, by name."""
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_interpolation(module: nn.Module, start: dict[str, Tensor], end: dict[str, Tensor], alpha: float) -> None:
    """Set each trainable parameter of ``module`` to the interpolation of its ``start`` and ``end`` values."""
    for name, p in module.named_parameters():
        if p.requires_grad:
            p.copy_(interpolate_weight(name, start[name], end[name], alpha))


class WeightInterpolation(L.Callback):
    """End ``fit`` with ``θ0 + alpha·(θ − θ0)`` of the trainable weights, and validate and checkpoint those (WiSE-FT).

    Args:
        alpha: weight of the fine-tuned weights, in ``[0, 1]``; 1 leaves training as it was.
    """

    def __init__(self, alpha: float = 0.5) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"WeightInterpolation: alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha
        self._start: dict[str, Tensor] | None = None
        self._stash: dict[str, Tensor] | None = None
        self._finished = False  # training ended: the module keeps the interpolated weights, the raw ones are stashed

    # ------------------------------------------------------------------ weights
    @staticmethod
    @torch.no_grad()
    def _load(pl_module: L.LightningModule, weights: dict[str, Tensor]) -> None:
        """Copy ``weights`` (by parameter name) into ``pl_module``."""
        for name, p in pl_module.named_parameters():
            if name in weights:
                p.copy_(weights[name])

    def _swap_in_interpolated(self, pl_module: L.LightningModule) -> None:
        """Keep the raw weights aside and load the interpolated ones."""
        assert self._start is not None
        self._stash = trainable_weights(pl_module)
        load_interpolation(pl_module, self._start, self._stash, self.alpha)

    def _restore_raw(self, pl_module: L.LightningModule) -> None:
        if self._stash is None or self._finished:
            return
        self._load(pl_module, self._stash)
        self._stash = None

    def _check_lora_starts_at_zero(self, start: dict[str, Tensor]) -> None:
        for name in start:
            if _is_lora_a(name):
                b_name = _lora_b_name(name)
                if b_name not in start:
                    raise ValueError(f"WeightInterpolation: LoRA weight {name} trains but its {b_name} does not")
                if start[b_name].count_nonzero() > 0:
                    raise ValueError(
                        f"WeightInterpolation: the LoRA adapter did not start at zero ({b_name} is nonzero at fit "
                        "start, e.g. continued with `init_from`), so alpha·(B·A) has no exact interpolation; "
                        "start from the previous stage's merged export (a fresh adapter) or drop this callback"
                    )

    # -------------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # a new fit starts from its own weights (a resumed one reloads them with the checkpoint)
            self._start, self._stash, self._finished = None, None, False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights_only = [c for c in trainer.checkpoint_callbacks if getattr(c, "save_weights_only", False)]
        if weights_only:  # Lightning skips callbacks' checkpoint hooks there: they would hold the raw weights
            raise ValueError(
                "WeightInterpolation: ModelCheckpoint(save_weights_only=True) would save the raw fine-tuned weights, "
                "not the interpolated ones; drop save_weights_only"
            )
        if self._start is None:  # a resumed fit may already have the run's starting point from the checkpoint
            self._start = trainable_weights(pl_module)
        self._check_lora_starts_at_zero(self._start)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and self._start is not None and not self._finished:
            self._swap_in_interpolated(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_raw(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in_interpolated(pl_module)
        self._finished = True  # the run ends here: keep the interpolated weights (the raw ones stay for checkpoints)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_raw(pl_module)

    # -------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._start is None or trainer.state.fn != "fit":
            return
        state = checkpoint["state_dict"]
        if self._stash is not None:  # mid-validation or after training: the module holds the interpolated weights
            checkpoint[CURRENT_KEY] = {name: t.clone() for name, t in self._stash.items() if name in state}
            return
        raw = {name: t for name, t in trainable_weights(pl_module).items() if name in state}
        checkpoint[CURRENT_KEY] = raw
        for name, t in raw.items():
            state[name] = interpolate_weight(name, self._start[name], t, self.alpha)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Resuming ``fit``: the module was loaded with the interpolated weights; put back the raw ones it trains."""
        if CURRENT_KEY in checkpoint:
            self._load(pl_module, checkpoint[CURRENT_KEY])

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "start": self._start}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict["alpha"] != self.alpha:
            raise ValueError(
                f"WeightInterpolation: the checkpoint was written with alpha={state_dict['alpha']}, this run has "
                f"alpha={self.alpha}; resume with the same alpha"
            )
        self._start = state_dict["start"]
