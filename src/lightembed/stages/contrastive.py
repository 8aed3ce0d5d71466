"""Supervised contrastive stage: encode anchor/positive(/negative), pool, and hand the embeddings to a loss."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lightembed import distributed
from lightembed.data.batches import Features, PairBatch
from lightembed.encoder import Encoder, EncoderSettings
from lightembed.gradcache import split_features
from lightembed.layer_pooling import check_pool_layers, pool_layers
from lightembed.losses import AnglEObjectiveLoss, Matryoshka2dLoss
from lightembed.losses.base import EmbeddingLoss
from lightembed.stages.base import EmbeddingModule
from lightembed.stages.batch_embedding import batch_embedding
from lightembed.stages.optim import default_optimizer
from lightembed.truncation import layer_count

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
        pool_layers: train on the pooled output of several layers (2D-Matryoshka; :mod:`lightembed.layer_pooling`):
            increasing layer counts ending with the last layer, e.g. ``[1, 2, 3, 4, 5, 6]``; the training step's
            embeddings are then ``(B, K, H)`` (for a :class:`~lightembed.losses.Matryoshka2dLoss`), while validation,
            ``encode`` and the export keep the full model's ``(B, H)``; cut it with ``EncoderSettings.layers``.
        guide: a frozen second encoder for :class:`~lightembed.losses.GISTEmbedLoss` (GISTEmbed's guide): it embeds
            the same fields, without gradient and in eval mode, and the loss receives ``guide_anchor``,
            ``guide_positive`` (``guide_negative``). It is not trained, not in the optimizer, and not saved in
            checkpoints or exports (it is reloaded from its settings). A guide with another vocabulary gets the texts
            decoded from the student's tokens, re-tokenised with its own tokenizer.
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
        pool_layers: list[int] | None = None,
        guide: EncoderSettings | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        warmup_ratio: float = 0.1,
        scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear",
    ) -> None:
        super().__init__(encoder, optimizer, warmup_ratio, scheduler)
        self.batch_embedding = batch_embedding(micro_batch_size, length_chunking)
        self.loss = loss if loss is not None else AnglEObjectiveLoss()
        self.gather_across_devices = gather_across_devices
        check_pool_layers(pool_layers, option="pool_layers")
        if pool_layers is not None and not isinstance(self.loss, Matryoshka2dLoss):
            raise ValueError(
                f"pool_layers gives the loss per-layer embeddings (B, K, H), which {type(self.loss).__name__} does "
                "not take: wrap it in lightembed.losses.Matryoshka2dLoss"
            )
        self.pool_layers = list(pool_layers) if pool_layers is not None else None
        guide = EncoderSettings.of(guide) if guide is not None else None
        if guide is not None and (guide.lora is not None or guide.quantization != "none"):
            raise ValueError("the guide is frozen: leave `guide.lora` and `guide.quantization` unset")
        self.hparams["guide"] = guide.as_dict() if guide is not None else None  # plain values, as `encoder`
        # Held in a tuple, outside the module tree: the guide's weights are then in no optimizer, checkpoint or
        # export, and `stage.train()` never switches its dropout on.
        self._guide: tuple[Encoder, ...] = (Encoder(guide),) if guide is not None else ()
        self._retokenize_for_guide = False

    @property
    def guide(self) -> Encoder | None:
        """The frozen guide encoder (``None`` without one)."""
        return self._guide[0] if self._guide else None

    def configure_model(self) -> None:
        super().configure_model()
        if self.pool_layers is not None:
            check_pool_layers(self.pool_layers, layer_count(self.encoder.backbone), "pool_layers")
        guide = self.guide
        if guide is not None and guide.backbone is None:
            guide.build()
            guide.eval().requires_grad_(False)
            self._retokenize_for_guide = guide.tokenizer.get_vocab() != self.tokenizer.get_vocab()

    def embed_layers(self, features: Features) -> Tensor:
        """``(B, K, H)``: the pooled output of each of ``pool_layers``, from one forward pass (training only:
        validation, ``encode`` and export use :meth:`embed`, the full model's ``(B, H)``)."""
        self.configure_model()
        return pool_layers(self.encoder, features, self.pool_layers)

    @torch.no_grad()
    def guide_embed(self, features: Features) -> Tensor:
        """The guide's ``(B, G)`` embeddings of a field (in micro-batches when GradCache bounds the batch)."""
        guide = self.guide
        assert guide is not None
        self.configure_model()
        device = features["input_ids"].device
        if guide.device != device:
            guide.to(device)
        if self._retokenize_for_guide:
            texts = self.tokenizer.batch_decode(features["input_ids"], skip_special_tokens=True)
            features = {k: v.to(device) for k, v in guide.tokenize(texts).items()}
        size = getattr(self.batch_embedding, "micro_batch_size", None) or features["input_ids"].shape[0]
        return torch.cat([guide(part) for part in split_features(features, size)])  # (B, G)

    def training_step(self, batch: PairBatch, batch_idx: int) -> Tensor:
        fields = {name: batch[name] for name in TEXT_FIELDS if name in batch}
        # a regression target (score) if the rows have one, else class ids or 0/1 pair labels
        labels = batch.get("score", batch.get("label"))
        ids = {name: batch.get(f"{name}_ids") for name in TEXT_FIELDS}
        guided = {f"guide_{name}": self.guide_embed(f) for name, f in fields.items()} if self.guide else {}
        if self.gather_across_devices:  # rows of every rank, in rank order
            labels = distributed.gather(labels)  # (ΣB,)
            ids = distributed.gather_text_ids(ids)  # (ΣB,) each
            guided = {k: distributed.gather(v) for k, v in guided.items()}  # (ΣB, G) each

        def loss_fn(embeddings: dict[str, Tensor]) -> Tensor:
            if self.gather_across_devices:
                embeddings = {k: distributed.gather_with_grad(v) for k, v in embeddings.items()}  # (ΣB, [K,] H)
            return self.loss(
                embeddings["anchor"],  # (B, H), or (B, K, H) with pool_layers
                embeddings.get("positive"),  # (B, [K,] H) | None: (text, class) batches have anchors only
                embeddings.get("negative"),  # (B, [K,] H) | None
                labels=labels,
                anchor_ids=ids["anchor"],
                positive_ids=ids["positive"],
                negative_ids=ids["negative"],
                **guided,  # the guide's (B, G) embeddings of each field, for GISTEmbed
            )

        embed = self.embed_layers if self.pool_layers is not None else None
        loss = self.embed_and_loss(fields, loss_fn, batch_idx, embed=embed)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["anchor"]["input_ids"].shape[0])
        return loss
