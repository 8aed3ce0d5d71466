"""Supervised contrastive stage: encode anchor/positive(/negative), pool, and hand the embeddings to a loss."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lightembed import distributed
from lightembed.data.batches import PairBatch
from lightembed.encoder import EncoderSettings
from lightembed.losses import AnglEObjectiveLoss
from lightembed.losses.base import EmbeddingLoss
from lightembed.stages.base import EmbeddingModule
from lightembed.stages.batch_embedding import batch_embedding
from lightembed.stages.optim import default_optimizer

TEXT_FIELDS = ("anchor", "positive", "negative")


class ContrastiveModule(EmbeddingModule):
    """Train an encoder on pairs or triplets with an embedding loss (AnglE by default).

    A batch (:class:`~lightembed.data.batches.PairBatch`) holds tokenised ``anchor`` and ``positive`` (and optionally
    ``negative``) texts, an optional ``score`` per pair and ``*_ids`` marking identical texts; the loss receives
    embeddings only (``loss(anchor, positive, negative, labels=score, anchor_ids=..., positive_ids=...,
    negative_ids=...)``).

    Scaling (see :mod:`lightembed.distributed` and :mod:`lightembed.gradcache`): ``gather_across_devices`` makes the
    loss see the global batch of every rank (in-batch negatives from all devices, exact full-batch gradients);
    ``micro_batch_size`` embeds the batch in micro-batches (GradCache) so the contrastive batch can outgrow memory.

    Args:
        encoder: the backbone and how it is loaded, pooled and adapted.
        loss: the objective; ``None`` means AnglE's combined objective with the AnglE paper's defaults.
        micro_batch_size: GradCache micro-batch (rows embedded at once; must divide the batch size); ``None``
            embeds the whole batch with graph.
        gather_across_devices: under DDP/FSDP, compute the loss on the batch gathered from every rank.
        length_chunking: embed the texts of a batch (every field together) sorted by length, in chunks each padded
            only to its own longest text (:mod:`lightembed.length_chunks`): the same batch and embeddings with less
            padding. The value is the cost of one more chunk in tokens (``plan_chunks`` minimises padded tokens plus
            this per chunk); ``None`` embeds each field in one forward pass. Not with ``micro_batch_size``, whose
            micro-batches already drop their trailing padding.
        optimizer, warmup_ratio, scheduler: see :class:`~lightembed.stages.base.EmbeddingModule`.
    """

    batch_is_the_negatives = True

    def __init__(
        self,
        encoder: EncoderSettings,
        loss: EmbeddingLoss | None = None,
        micro_batch_size: int | None = None,
        gather_across_devices: bool = False,
        length_chunking: float | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        warmup_ratio: float = 0.1,
        scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear",
    ) -> None:
        super().__init__(encoder, optimizer, warmup_ratio, scheduler)
        self.batch_embedding = batch_embedding(micro_batch_size, length_chunking)
        self.loss = loss if loss is not None else AnglEObjectiveLoss()
        self.gather_across_devices = gather_across_devices

    def training_step(self, batch: PairBatch, batch_idx: int) -> Tensor:
        fields = {name: batch[name] for name in TEXT_FIELDS if name in batch}
        # a regression target (score) if the rows have one, else class ids or 0/1 pair labels
        labels = batch.get("score", batch.get("label"))
        ids = {name: batch.get(f"{name}_ids") for name in TEXT_FIELDS}
        if self.gather_across_devices:  # rows of every rank, in rank order
            labels = distributed.gather(labels)  # (ΣB,)
            ids = distributed.gather_text_ids(ids)  # (ΣB,) each

        def loss_fn(embeddings: dict[str, Tensor]) -> Tensor:
            if self.gather_across_devices:
                embeddings = {k: distributed.gather_with_grad(v) for k, v in embeddings.items()}  # (ΣB, H) each
            return self.loss(
                embeddings["anchor"],  # (B, H)
                embeddings.get("positive"),  # (B, H) | None: (text, class) batches have anchors only
                embeddings.get("negative"),  # (B, H) | None
                labels=labels,
                anchor_ids=ids["anchor"],
                positive_ids=ids["positive"],
                negative_ids=ids["negative"],
            )

        loss = self.embed_and_loss(fields, loss_fn, batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["anchor"]["input_ids"].shape[0])
        return loss
