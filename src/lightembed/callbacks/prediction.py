"""PredictionWriter: the embeddings ``lightembed predict`` computes, written to disk in source order."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

log = logging.getLogger(__name__)


class PredictionWriter(BasePredictionWriter):
    """Write the stage's ``predict_step`` outputs (``embedding``, ``row``) once every batch is embedded.

    ``npy`` writes ``embeddings.npy`` (``(N, H)`` float32, row ``i`` = the source's row ``i``) and ``rows.parquet``
    (``row``, the id column if the data module has one, ``text``) beside it; ``parquet`` writes one
    ``embeddings.parquet`` with those columns and an ``embedding`` column (a fixed-size list of float32).

    Args:
        output_dir: the folder to write into; ``None`` means ``<run folder>/predictions``.
        format: ``npy`` or ``parquet``.
    """

    def __init__(self, output_dir: str | None = None, format: Literal["npy", "parquet"] = "npy") -> None:
        super().__init__(write_interval="batch")
        if format not in ("npy", "parquet"):
            raise ValueError(f"PredictionWriter format must be 'npy' or 'parquet', got {format!r}")
        self.output_dir = output_dir
        self.format = format
        self._embeddings: list[torch.Tensor] = []
        self._rows: list[torch.Tensor] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._embeddings, self._rows = [], []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, dict) or "embedding" not in prediction or "row" not in prediction:
            raise TypeError(
                f"PredictionWriter needs predict_step to return {{'embedding', 'row'}} (a lightembed stage with "
                f"lightembed.data.TextDataModule); got {type(prediction).__name__}"
            )
        self._embeddings.append(prediction["embedding"].float().cpu())
        self._rows.append(prediction["row"].cpu())

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._rows:
            return
        rows = torch.cat(self._rows)  # (N,) source positions, in batch order
        embeddings = torch.empty(len(rows), self._embeddings[0].shape[1])  # (N, H)
        embeddings[rows] = torch.cat(self._embeddings)  # back in source order
        run_dir = trainer.log_dir or trainer.default_root_dir
        folder = Path(self.output_dir or Path(run_dir) / "predictions")
        if trainer.world_size > 1:  # each rank embedded its own part of the rows
            folder = folder / f"rank{trainer.global_rank}"
        folder.mkdir(parents=True, exist_ok=True)
        order = rows.sort().values
        table = self._row_table(trainer, order.numpy())
        vectors = embeddings[order].numpy()  # (N, H)
        if self.format == "npy":
            np.save(folder / "embeddings.npy", vectors)
            pq.write_table(table, folder / "rows.parquet")
            written = folder / "embeddings.npy"
        else:
            column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
            pq.write_table(table.append_column("embedding", column), folder / "embeddings.parquet")
            written = folder / "embeddings.parquet"
        log.info("predict: wrote %d embeddings to %s", len(vectors), written)
        self._embeddings, self._rows = [], []

    @staticmethod
    def _row_table(trainer: L.Trainer, rows: np.ndarray) -> pa.Table:
        """``row`` plus the data module's ids and texts for those rows, when it provides them (``rows()``)."""
        columns: dict[str, Any] = {"row": rows}
        source = getattr(trainer.datamodule, "rows", None)
        if callable(source):
            for name, values in source().items():
                columns[name] = [values[i] for i in rows]
        return pa.table(columns)
