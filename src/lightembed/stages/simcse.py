"""Unsupervised SimCSE stage: two dropout views of the same sentence are each other's positive."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lightembed import distributed
from lightembed.backbones import family_of
from lightembed.data.batches import Features, SentenceBatch
from lightembed.encoder import EncoderSettings
from lightembed.losses import InBatchNegativesLoss
from lightembed.losses.base import EmbeddingLoss
from lightembed.stages.base import EmbeddingModule
from lightembed.stages.batch_embedding import batch_embedding
from lightembed.stages.optim import default_optimizer


def two_views(features: Features) -> dict[str, Tensor]:
    """The batch stacked with itself, so one forward pass embeds both views: rows ``i`` and ``B + i`` are the same
    sentence, ``(B, L)`` -> ``(2B, L)`` for every tensor."""
    return {k: v.repeat(2, *([1] * (v.dim() - 1))) for k, v in features.items()}  # (2B, L)


class SimCSEModule(EmbeddingModule):
    """Unsupervised SimCSE; LLM2Vec's third step on a bidirectional decoder.

    "SimCSE: Simple Contrastive Learning of Sentence Embeddings", Gao, Yao and Chen, 2021. Each batch of sentences
    is encoded twice in one forward pass (:func:`two_views`); dropout makes the two views differ, and the in-batch
    InfoNCE loss pulls each sentence's views together. Identical sentences in a batch share ``text_ids`` and count as
    positives, not negatives.

    Batches (:class:`~lightembed.data.batches.SentenceBatch`) come from :class:`~lightembed.data.CorpusDataModule`
    with ``objective="simcse"``. Validation: STS Spearman on the data module's STS sets.

    Args:
        encoder: the backbone and how it is loaded, pooled and adapted. Its ``dropout`` is the augmentation (SimCSE
            uses 0.1 for BERT, LLM2Vec 0.3 for decoders, whose attention dropout is 0 by default); a backbone whose
            dropout is all zero is an error.
        loss: the contrastive loss on the two views; ``None`` is ``InBatchNegativesLoss(temperature=0.05)``.
        micro_batch_size: GradCache micro-batch over the ``2B`` stacked rows (must divide the batch size); each
            micro-batch is replayed with the dropout masks of its first pass. ``None``: no GradCache.
        gather_across_devices: under DDP/FSDP, compute the loss on the views gathered from every rank.
        optimizer, warmup_ratio, scheduler: see :class:`~lightembed.stages.base.EmbeddingModule`.
    """

    batch_is_the_negatives = True

    def __init__(
        self,
        encoder: EncoderSettings,
        loss: EmbeddingLoss | None = None,
        micro_batch_size: int | None = None,
        gather_across_devices: bool = False,
        optimizer: OptimizerCallable = default_optimizer,
        warmup_ratio: float = 0.1,
        scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear",
    ) -> None:
        super().__init__(encoder, optimizer, warmup_ratio, scheduler)
        self.batch_embedding = batch_embedding(micro_batch_size)
        self.loss = loss if loss is not None else InBatchNegativesLoss(temperature=0.05)
        self.gather_across_devices = gather_across_devices

    def configure_model(self) -> None:
        built = self.backbone is not None
        super().configure_model()
        if built:
            return
        config = self.backbone.config
        rates = {name: getattr(config, name, 0.0) or 0.0 for name in family_of(config).dropout_fields}
        if not any(rate > 0 for rate in rates.values()):
            raise ValueError(
                f"SimCSE needs dropout as its augmentation, but {self.settings.backbone!r} has "
                f"{rates or 'no dropout'}: set the stage option `encoder.dropout` (e.g. 0.1 for BERT, 0.3 for "
                "decoders as in LLM2Vec)"
            )

    def training_step(self, batch: SentenceBatch, batch_idx: int) -> Tensor:
        features = batch["text"]
        size = features["input_ids"].shape[0]
        ids = batch.get("text_ids")  # (B,)
        if self.gather_across_devices:
            ids = distributed.gather_text_ids({"text": ids})["text"]  # (ΣB,)

        def loss_fn(embeddings: dict[str, Tensor]) -> Tensor:
            views = embeddings["views"]  # (2B, H): rows i and B+i are two dropout views of sentence i
            first, second = views[:size], views[size:]  # (B, H), (B, H)
            if self.gather_across_devices:
                first, second = distributed.gather_with_grad(first), distributed.gather_with_grad(second)  # (ΣB, H)
            return self.loss(first, second, anchor_ids=ids, positive_ids=ids)

        loss = self.embed_and_loss({"views": two_views(features)}, loss_fn, batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss
