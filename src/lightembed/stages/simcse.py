"""Unsupervised SimCSE stage: two dropout views of the same sentence are each other's positive."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightembed import distributed
from lightembed.backbones import family_of
from lightembed.losses import InBatchNegativesLoss
from lightembed.stages.base import EmbeddingModule


class SimCSEModule(EmbeddingModule):
    """Unsupervised SimCSE (Gao et al. 2021, arXiv 2104.08821); LLM2Vec step 3 on a bidirectional decoder.

    Each batch of sentences is encoded twice in one forward pass (the batch is stacked with itself); dropout makes
    the two views differ, and the in-batch InfoNCE loss (τ = 0.05) pulls each sentence's views together. Identical
    sentences in a batch share ``text_ids`` and count as positives, not negatives.

    Batches come from :class:`~lightembed.data.CorpusDataModule` with ``objective="simcse"``: ``text`` (tokenised)
    and ``text_ids``. Validation: STS Spearman on the data module's STS sets.

    Args:
        loss: the contrastive loss on the two views; ``None`` is ``InBatchNegativesLoss(temperature=0.05)``.
        micro_batch_size: GradCache micro-batch over the ``2B`` stacked rows (must divide the batch size); each
            micro-batch is replayed with the dropout masks of its first pass. ``None``: no GradCache.
        gather_across_devices: under DDP/FSDP, compute the loss on the views gathered from every rank.
        dropout: the augmentation: every dropout rate of the backbone (SimCSE 0.1 for BERT, LLM2Vec 0.3 for
            decoders, whose attention dropout is 0 by default). A backbone whose dropout is all zero is an error.
        (other arguments: see :class:`~lightembed.stages.base.EmbeddingModule`)
    """

    def __init__(
        self,
        model: str = "packaged:all-MiniLM-L6-v2",
        loss: nn.Module | None = None,
        micro_batch_size: int | None = None,
        gather_across_devices: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=model, **kwargs)
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 (or None), got {micro_batch_size}")
        self.loss = loss if loss is not None else InBatchNegativesLoss(temperature=0.05)
        self.micro_batch_size = micro_batch_size
        self.gather_across_devices = gather_across_devices

    batch_is_the_negatives = True

    def configure_model(self) -> None:
        built = self.backbone is not None
        super().configure_model()
        if built:
            return
        config = self.backbone.config
        rates = {name: getattr(config, name, 0.0) or 0.0 for name in family_of(config).dropout_fields}
        if not any(rate > 0 for rate in rates.values()):
            raise ValueError(
                f"SimCSE needs dropout as its augmentation, but {self.model_name!r} has {rates or 'no dropout'}: "
                "set the stage option `dropout` (e.g. 0.1 for BERT, 0.3 for decoders as in LLM2Vec)"
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        features = batch["text"]
        size = features["input_ids"].shape[0]
        stacked = {k: v.repeat(2, *([1] * (v.dim() - 1))) for k, v in features.items()}  # (2B, L)
        ids = batch.get("text_ids")  # (B,)
        if self.gather_across_devices:
            ids = distributed.gather_text_ids({"text": ids})["text"]  # (ΣB,)

        def loss_fn(embeddings: dict[str, Tensor]) -> Tensor:
            views = embeddings["views"]  # (2B, H): rows i and B+i are two dropout views of sentence i
            first, second = views[:size], views[size:]  # (B, H), (B, H)
            if self.gather_across_devices:
                first, second = distributed.gather_with_grad(first), distributed.gather_with_grad(second)  # (ΣB, H)
            return self.loss(first, second, anchor_ids=ids, positive_ids=ids)

        loss = self.contrastive_loss({"views": stacked}, loss_fn, batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss
