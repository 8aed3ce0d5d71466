"""Distillation stage: a student encoder learns a teacher's embeddings (MSE) or its triplet margins (MarginMSE)."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lightembed.backbones import resolve_model_path
from lightembed.data.distill import DistillationBatch
from lightembed.data.teacher_cache import TeacherCache, default_cache_dir, teacher_fingerprint
from lightembed.encoder import Encoder, EncoderSettings
from lightembed.losses.base import EmbeddingLoss
from lightembed.losses.distillation import EmbeddingMSELoss, MarginMSELoss, Projection
from lightembed.stages.base import EmbeddingModule
from lightembed.stages.batch_embedding import batch_embedding
from lightembed.stages.optim import default_optimizer

log = logging.getLogger(__name__)

TEXT_FIELDS = ("anchor", "positive", "negative")
PROJECTION_KEY = "loss.projection.weight"


class DistillationModule(EmbeddingModule):
    """Distil a teacher encoder into the stage's encoder (the student).

    MSE ("Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation", Reimers and Gurevych,
    2020): the student's embedding of every training text is pulled to the teacher's (through a projection when
    their sizes differ, :class:`~lightembed.losses.distillation.EmbeddingMSELoss`). MarginMSE ("Improving Efficient
    Neural Ranking Models with Cross-Architecture Knowledge Distillation", Hofstätter et al., 2020): on (query,
    positive, negative) triplets the student's score margin is pulled to the teacher's
    (:class:`~lightembed.losses.distillation.MarginMSELoss`; the teacher's margins come from its embeddings).

    The teacher runs once per distinct text, ever: in ``setup`` the stage asks the data module
    (:class:`~lightembed.data.distill.DistillationDataModule`) for its training texts, reads their embeddings from
    the teacher cache (:mod:`lightembed.data.teacher_cache`, keyed by the teacher's file contents and options and by
    each text's hash), embeds only the texts the cache lacks, and hands the table to the data module, whose batches
    then carry it (:class:`~lightembed.data.distill.DistillationBatch`). Under DDP the first rank fills the cache and
    the others read it. The teacher is freed before training starts.

    The projection is part of the loss: trained with the student, never exported (the export is the student's
    encoder alone, as for every stage).

    Args:
        encoder: the student: backbone and how it is loaded, pooled and adapted (``layers`` cuts it to its first
            blocks, e.g. a 3-layer student of the teacher itself).
        teacher: anything :meth:`Encoder.from_pretrained` loads: a Hub id, a folder (an HF model or a lightembed /
            sentence-transformers export, an LLM2Vec export included), ``packaged:<name>`` or a stage's ``.ckpt``.
        loss: ``"mse"``, ``"margin_mse"`` (dot-product margins), or an :class:`EmbeddingLoss`: a
            :class:`MarginMSELoss` gets triplets and the teacher's margins, any other loss every text's student
            embedding as ``anchor`` and the teacher's as ``labels`` (as :class:`EmbeddingMSELoss`).
        projection: with ``"mse"`` and a student whose size differs from the teacher's: ``"learned"`` (a trained
            linear map) or ``"fixed"`` (a seeded orthonormal map, not trained).
        teacher_normalize: L2-normalise the teacher's embeddings; ``None`` keeps the teacher's own setting.
        teacher_precision: ``"float32"`` or ``"bfloat16"`` (autocast) for the teacher's forward passes.
        teacher_batch_size: texts the teacher embeds at once.
        cache_dir: the teacher cache's folder; ``None`` is ``~/.cache/lightembed/teacher``
            (``$LIGHTEMBED_CACHE/teacher`` when set).
        micro_batch_size, length_chunking: how a batch is embedded (see
            :class:`~lightembed.stages.contrastive.ContrastiveModule`).
        optimizer, warmup_ratio, scheduler: see :class:`~lightembed.stages.base.EmbeddingModule`.
    """

    def __init__(
        self,
        encoder: EncoderSettings,
        teacher: str,
        loss: Literal["mse", "margin_mse"] | EmbeddingLoss = "mse",
        projection: Projection = "learned",
        teacher_normalize: bool | None = None,
        teacher_precision: Literal["float32", "bfloat16"] = "float32",
        teacher_batch_size: int = 128,
        cache_dir: str | None = None,
        micro_batch_size: int | None = None,
        length_chunking: float | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        warmup_ratio: float = 0.1,
        scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear",
    ) -> None:
        super().__init__(encoder, optimizer, warmup_ratio, scheduler)
        resolve_model_path(teacher)  # a missing local teacher fails now, naming the path
        if teacher_batch_size < 1:
            raise ValueError(f"teacher_batch_size must be >= 1, got {teacher_batch_size}")
        if teacher_precision not in ("float32", "bfloat16"):
            raise ValueError(f"teacher_precision must be 'float32' or 'bfloat16', got {teacher_precision!r}")
        if isinstance(loss, str):
            if loss not in ("mse", "margin_mse"):
                raise ValueError(f"loss must be 'mse', 'margin_mse' or an EmbeddingLoss, got {loss!r}")
            loss = EmbeddingMSELoss(projection=projection) if loss == "mse" else MarginMSELoss()
        self.loss = loss
        self.teacher = teacher
        self.teacher_normalize = teacher_normalize
        self.teacher_precision = teacher_precision
        self.teacher_batch_size = teacher_batch_size
        self.cache_dir = cache_dir
        self.batch_embedding = batch_embedding(micro_batch_size, length_chunking)

    # ---------------------------------------------------------------- teacher
    @property
    def uses_margins(self) -> bool:
        return isinstance(self.loss, MarginMSELoss)

    def teacher_options(self) -> dict[str, Any]:
        """What the teacher's embeddings depend on besides its files: part of the cache key."""
        return {"normalize": self.teacher_normalize, "precision": self.teacher_precision}

    def _embed_with_teacher(self, texts: list[str]) -> Tensor:
        """Load the teacher and embed ``texts``: ``(M, T)``. The teacher is local here, so it is freed on return."""
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        log.info("distillation: loading teacher %s to embed %d texts", self.teacher, len(texts))
        teacher = Encoder.from_pretrained(self.teacher, normalize=self.teacher_normalize, device=device)
        return teacher.encode(texts, batch_size=self.teacher_batch_size, precision=self.teacher_precision)

    def teacher_embeddings(self, texts: list[str]) -> Tensor:
        """The teacher's embeddings of ``texts`` from the cache, embedding (and caching) the texts it lacks."""
        fingerprint = teacher_fingerprint(self.teacher, self.teacher_options())
        folder = self.cache_dir if self.cache_dir is not None else default_cache_dir()
        cache = TeacherCache(folder, fingerprint, {"teacher": self.teacher, **self.teacher_options()})
        trainer = self.trainer if self._trainer is not None else None
        if trainer is None or trainer.is_global_zero:  # one rank embeds; the others read what it wrote
            table = cache.embeddings(texts, self._embed_with_teacher)
        if trainer is not None:
            trainer.strategy.barrier("teacher cache")
            if not trainer.is_global_zero:
                table = cache.embeddings(texts, self._embed_with_teacher)
        log.info("distillation: %d teacher embeddings (%d from the cache) in %s", len(texts), cache.hits, cache.folder)
        return table

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        datamodule = self.trainer.datamodule
        if not (hasattr(datamodule, "teacher_texts") and hasattr(datamodule, "set_teacher")):
            raise ValueError(
                f"DistillationModule needs a data module that carries teacher embeddings "
                f"(lightembed.data.distill.DistillationDataModule), got {type(datamodule).__name__}"
            )
        if self.uses_margins and "negative" not in datamodule.fields:
            raise ValueError(
                f"loss MarginMSE needs (query, positive, negative) triplets, but data.train_format="
                f"{datamodule.train_format!r} gives {datamodule.fields}: use triplets or nli_triplets"
            )
        table = self.teacher_embeddings(datamodule.teacher_texts())  # (N, T)
        datamodule.set_teacher(table)
        if isinstance(self.loss, EmbeddingMSELoss):  # before Lightning builds the optimizer from the parameters
            self.loss.build_projection(self.encoder.embedding_dim, table.shape[1])  # moved to the device with us

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild a projection the checkpoint holds, so its weights load (``load_from_checkpoint`` runs no setup)."""
        weight = checkpoint.get("state_dict", {}).get(PROJECTION_KEY)
        if weight is not None and isinstance(self.loss, EmbeddingMSELoss):
            self.loss.build_projection(weight.shape[1], weight.shape[0])  # weight: (T, S)
        super().on_load_checkpoint(checkpoint)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: DistillationBatch, batch_idx: int) -> Tensor:
        fields = [name for name in TEXT_FIELDS if name in batch]
        teacher = {name: batch[f"teacher_{name}"] for name in fields}  # type: ignore[literal-required]  # (B, T)
        if self.uses_margins:
            margins = self.loss.margins(teacher["anchor"], teacher["positive"], teacher["negative"])  # (B, 1)

            def loss_fn(embeddings: dict[str, Tensor]) -> Tensor:
                return self.loss(
                    embeddings["anchor"], embeddings["positive"], embeddings["negative"], labels=margins
                )  # (B, H) each
        else:
            targets = torch.cat([teacher[name] for name in fields])  # (F*B, T): every text of every field

            def loss_fn(embeddings: dict[str, Tensor]) -> Tensor:
                return self.loss(torch.cat([embeddings[name] for name in fields]), labels=targets)  # (F*B, H)

        loss = self.embed_and_loss({name: batch[name] for name in fields}, loss_fn, batch_idx)  # type: ignore[literal-required]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["anchor"]["input_ids"].shape[0])
        return loss
