"""Supervised contrastive stage: encode anchor/positive(/negative), pool, and hand the embeddings to a loss."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightembed import distributed
from lightembed.losses import AnglELoss
from lightembed.stages.base import EmbeddingModule


class ContrastiveModule(EmbeddingModule):
    """Train an encoder on pairs or triplets with an embedding loss (AnglE by default).

    A batch holds tokenised ``anchor`` and ``positive`` (and optionally ``negative``) texts, an optional ``score``
    per pair and ``*_ids`` marking identical texts; the loss receives embeddings only
    (``loss(anchor, positive, negative, labels=score, anchor_ids=..., positive_ids=..., negative_ids=...)``).

    Scaling (see :mod:`lightembed.distributed` and :mod:`lightembed.gradcache`): ``gather_across_devices`` makes the
    loss see the global batch of every rank (in-batch negatives from all devices, exact full-batch gradients);
    ``micro_batch_size`` embeds the batch in micro-batches (GradCache) so the contrastive batch can outgrow memory.

    Args:
        loss: the objective; ``None`` means :class:`~lightembed.losses.AnglELoss` with the AnglE paper's defaults.
        micro_batch_size: GradCache micro-batch (rows embedded at once; must divide the batch size); ``None``
            embeds the whole batch with graph.
        gather_across_devices: under DDP/FSDP, compute the loss on the batch gathered from every rank.
        length_chunking: embed the texts of a batch (every field together) sorted by length, in chunks each padded
            only to its own longest text (:mod:`lightembed.length_chunks`): the same batch and embeddings with less
            padding. The value is the cost of one more chunk in tokens (``plan_chunks`` minimises padded tokens plus
            this per chunk; about 160 on CPU); ``None`` embeds each field in one forward pass. Not with
            ``micro_batch_size``, whose micro-batches already drop their trailing padding.
        (all other arguments: see :class:`~lightembed.stages.base.EmbeddingModule`)
    """

    def __init__(
        self,
        model: str = "packaged:all-MiniLM-L6-v2",
        loss: nn.Module | None = None,
        micro_batch_size: int | None = None,
        gather_across_devices: bool = False,
        length_chunking: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=model, **kwargs)
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 (or None), got {micro_batch_size}")
        if length_chunking is not None and length_chunking < 0:
            raise ValueError(f"length_chunking is a per-chunk cost in tokens: >= 0 (or None), got {length_chunking}")
        if length_chunking is not None and micro_batch_size is not None:
            raise ValueError(
                "set either length_chunking or micro_batch_size: GradCache embeds fixed micro-batches (each already "
                "cut to its own longest text)"
            )
        self.length_chunking = length_chunking
        self.loss = loss if loss is not None else AnglELoss()
        self.micro_batch_size = micro_batch_size
        self.gather_across_devices = gather_across_devices

    batch_is_the_negatives = True

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        fields = {name: batch[name] for name in ("anchor", "positive", "negative") if name in batch}
        labels = batch.get("score")
        ids = {name: batch.get(f"{name}_ids") for name in ("anchor", "positive", "negative")}
        if self.gather_across_devices:  # rows of every rank, in rank order
            labels = distributed.gather(labels)  # (ΣB,)
            ids = distributed.gather_text_ids(ids)  # (ΣB,) each

        def loss_fn(embeddings: dict[str, Tensor]) -> Tensor:
            if self.gather_across_devices:
                embeddings = {k: distributed.gather_with_grad(v) for k, v in embeddings.items()}  # (ΣB, H) each
            return self.loss(
                embeddings["anchor"],  # (B, H)
                embeddings["positive"],  # (B, H)
                embeddings.get("negative"),  # (B, H) | None
                labels=labels,
                anchor_ids=ids["anchor"],
                positive_ids=ids["positive"],
                negative_ids=ids["negative"],
            )

        loss = self.contrastive_loss(fields, loss_fn, batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["anchor"]["input_ids"].shape[0])
        return loss
