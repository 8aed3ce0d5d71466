"""Supervised contrastive stage: encode anchor/positive(/negative), pool, and hand the embeddings to a loss."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lightembed.lora import LoRASettings
from lightembed.losses import AnglELoss
from lightembed.stages.base import EmbeddingModule, default_optimizer


class ContrastiveModule(EmbeddingModule):
    """Train an encoder on pairs or triplets with an embedding loss (AnglE by default).

    A batch holds tokenised ``anchor`` and ``positive`` (and optionally ``negative``) texts, an optional ``score``
    per pair and ``*_ids`` marking identical texts; the loss receives embeddings only
    (``loss(anchor, positive, negative, labels=score, anchor_ids=..., positive_ids=..., negative_ids=...)``).

    Args:
        loss: the objective; ``None`` means :class:`~lightembed.losses.AnglELoss` with the AnglE paper's defaults.
        (all other arguments: see :class:`~lightembed.stages.base.EmbeddingModule`)
    """

    def __init__(
        self,
        model: str = "packaged:all-MiniLM-L6-v2",
        loss: nn.Module | None = None,
        pooling: str = "mean",
        max_length: int = 128,
        normalize: bool = False,
        dtype: str = "float32",
        bidirectional: bool | None = None,
        dropout: float | None = None,
        gradient_checkpointing: bool = False,
        lora: LoRASettings | None = None,
        quantization: Literal["none", "4bit"] = "none",
        optimizer: OptimizerCallable = default_optimizer,
        warmup_ratio: float = 0.1,
        scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear",
    ) -> None:
        super().__init__(
            model=model,
            pooling=pooling,
            max_length=max_length,
            normalize=normalize,
            dtype=dtype,
            bidirectional=bidirectional,
            dropout=dropout,
            gradient_checkpointing=gradient_checkpointing,
            lora=lora,
            quantization=quantization,
            optimizer=optimizer,
            warmup_ratio=warmup_ratio,
            scheduler=scheduler,
        )
        self.loss = loss if loss is not None else AnglELoss()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        anchor = self.embed(batch["anchor"])  # (B, H)
        positive = self.embed(batch["positive"])  # (B, H)
        negative = self.embed(batch["negative"]) if "negative" in batch else None  # (B, H)
        loss = self.loss(
            anchor,
            positive,
            negative,
            labels=batch.get("score"),
            anchor_ids=batch.get("anchor_ids"),
            positive_ids=batch.get("positive_ids"),
            negative_ids=batch.get("negative_ids"),
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=anchor.shape[0])
        return loss
