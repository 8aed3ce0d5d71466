"""EmbeddingModule: what every stage shares — an Encoder to train, the optimiser and schedule, STS validation.

A stage subclasses it with a ``training_step`` (and its loss); the parts it composes live beside it:
:mod:`~lightembed.stages.batch_embedding` (plain, length-chunked or GradCache embedding of a batch),
:mod:`~lightembed.stages.checks` (fit-start checks), :mod:`~lightembed.stages.optim` and
:mod:`~lightembed.stages.sts_metrics`. The model itself is an :class:`~lightembed.encoder.Encoder`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import Tensor, nn

from lightembed.data.batches import Features, PairBatch, evaluation_sets
from lightembed.encoder import (
    ENCODER_SETTINGS_KEY,
    FROZEN_BASE_KEY,
    Encoder,
    EncoderSettings,
    encode_texts,
    fill_frozen_weights,
)
from lightembed.stages import checks
from lightembed.stages.batch_embedding import BatchEmbedding, Embed, LossFn, PlainEmbedding
from lightembed.stages.optim import (
    decay_groups,
    default_optimizer,
    optimizer_settings,
    unique_group_names,
    warmup_schedule,
)
from lightembed.stages.sts_metrics import STSMetrics
from lightembed.strategies import shard_blocks


class EmbeddingModule(L.LightningModule):
    """A stage: trains ``self.encoder`` and validates it on the data module's STS sets.

    Owns the encoder's construction (idempotent ``configure_model``, FSDP2-safe), the optimizer and warmup schedule,
    gradient clipping, adapter-only checkpoints of LoRA stages, and STS validation/test metrics (cosine Spearman,
    logged as ``val/<set>_spearman`` and ``test/<set>_spearman``, plus ``val/spearman_mean`` over the sets).

    Args:
        encoder: the backbone and how it is loaded, pooled and adapted (:class:`~lightembed.encoder.EncoderSettings`;
            a mapping from YAML or a checkpoint is accepted).
        optimizer: builds the optimizer from parameter groups (weight decay is off for biases and norms).
        warmup_ratio: fraction of the training steps spent warming the learning rate up from 0 (rounded up).
        scheduler: learning-rate shape after warmup.
    """

    batch_is_the_negatives = False  # the loss compares rows of a batch: accumulation is not a bigger batch
    encoder_alone_is_exact = True  # inference needs only the encoder (False: a stage that embeds otherwise)

    def __init__(
        self,
        encoder: EncoderSettings,
        optimizer: OptimizerCallable = default_optimizer,
        warmup_ratio: float = 0.1,
        scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear",
    ) -> None:
        super().__init__()
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        settings = EncoderSettings.of(encoder)
        self.save_hyperparameters(ignore=["optimizer", "loss"])
        self.hparams["encoder"] = settings.as_dict()  # plain values: checkpoints load with weights_only=True
        self.encoder = Encoder(settings)
        self.optimizer_factory = optimizer
        self.batch_embedding: BatchEmbedding = PlainEmbedding()
        self.val_metrics = STSMetrics([])
        self.test_metrics = STSMetrics([])
        self.sts_val_offset = 0
        self._sharded = False
        self._grads_from_step = False

    @property
    def settings(self) -> EncoderSettings:
        return self.encoder.settings

    @property
    def backbone(self) -> nn.Module | None:
        """The encoder's backbone (``None`` until ``configure_model``)."""
        return self.encoder.backbone

    @property
    def tokenizer(self) -> Any:
        return self.encoder.tokenizer

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Build the encoder once (Lightning may call this several times, e.g. under FSDP or on reload)."""
        if self.encoder.backbone is None:
            self.encoder.build()
            self.encoder.backbone.train(self.training)
        self._shard()

    def _shard(self) -> None:
        """Under FSDP2 (``FSDP2Strategy``: a device mesh is set) shard each block with ``fully_shard``, once."""
        mesh = self.device_mesh if self._trainer is not None else None
        if mesh is None or self._sharded:
            return
        shard_blocks(self.encoder.backbone, mesh)
        self._sharded = True

    def embed(self, features: Features) -> Tensor:
        """Tokenised features -> ``(B, H)`` embeddings (a stage may embed otherwise at inference)."""
        self.configure_model()
        return self.encoder(features)

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        normalize: bool | None = None,
        precision: Literal["float32", "bfloat16"] = "float32",
        instruction: str | None = None,
        *,
        device: str | torch.device | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = False,
    ) -> Tensor | np.ndarray:
        """Embed texts with this stage's :meth:`embed`: ``(N, H)`` float32 on CPU (see :meth:`Encoder.encode`)."""
        self.configure_model()
        options = {"device": device, "show_progress_bar": show_progress_bar, "convert_to_numpy": convert_to_numpy}
        return encode_texts(
            self, self.encoder, self.embed, texts, batch_size, normalize, precision, instruction, **options
        )

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Embed a batch of texts (:class:`~lightembed.data.texts.TextDataModule`) as :meth:`encode` does:
        ``{"embedding": (B, H) float32 on CPU, "row": (B,) the rows' positions in the source}``; a prediction writer
        (:class:`~lightembed.callbacks.PredictionWriter`) puts them on disk."""
        embeddings = self.embed(batch["text"]).float()  # (B, H)
        if self.settings.normalize:
            embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
        return {"embedding": embeddings.cpu(), "row": batch["row"].cpu()}

    def training_summary(self) -> dict[str, Any]:
        """What this stage trains with, as flat plain values for hyperparameter logs and the model card: the loss
        class and its settings (``loss``, ``loss.<name>``) and, once configured, the optimizer's (``optimizer.lr``)."""
        summary: dict[str, Any] = {}
        loss = getattr(self, "loss", None)
        if isinstance(loss, nn.Module):
            summary["loss"] = type(loss).__name__
            for path, module in loss.named_modules():  # a composite loss's terms are sub-modules with settings
                prefix = f"loss.{path}." if path else "loss."
                for name, value in vars(module).items():
                    if not name.startswith("_") and name != "training" and isinstance(value, bool | int | float | str):
                        summary[prefix + name] = value
        if self._trainer is not None and self.trainer.optimizers:
            summary.update(optimizer_settings(self.trainer.optimizers[0]))
        return summary

    # --------------------------------------------------------- contrastive step
    def embed_and_loss(
        self, fields: Mapping[str, Features], loss_fn: LossFn, batch_idx: int = 0, embed: Embed | None = None
    ) -> Tensor:
        """Embed each field (``{"anchor": features, ...}``) with the stage's batch embedding; ``loss_fn`` of them.
        ``embed`` replaces :meth:`embed` for this step (e.g. per-layer embeddings ``(B, K, H)``).

        GradCache accumulates all but the last micro-batch's gradients inside this call, so the trainer's zero-grad
        for this step is done before them (see :meth:`optimizer_zero_grad`).
        """
        grad_scale = 1.0
        if self.batch_embedding.accumulates_gradients and self._trainer is not None and self.trainer.training:
            accumulate = self.trainer.accumulate_grad_batches
            grad_scale = 1.0 / accumulate  # Lightning divides the returned loss by it before backward
            if batch_idx % accumulate == 0:  # Lightning would zero the gradients after this step: do it before
                optimizers = self.optimizers(use_pl_optimizer=False)
                for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
                    optimizer.zero_grad()
                self._grads_from_step = True
        loss = getattr(self, "loss", None)
        parameters = [p for p in loss.parameters() if p.requires_grad] if isinstance(loss, nn.Module) else []
        embed = embed or self.embed
        return self.batch_embedding(embed, fields, loss_fn, grad_scale=grad_scale, parameters=parameters)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        """Zero the gradients, unless a GradCache step already did and accumulated part of this step's gradients."""
        if self._grads_from_step:
            self._grads_from_step = False
            return
        optimizer.zero_grad()

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip as Lightning does, and also for fused optimizers under bf16-mixed.

        Lightning refuses to clip for an optimizer that unscales gradients inside its step (fused AdamW) under any
        mixed precision, because a GradScaler's scaled gradients would be clipped. bf16-mixed has no scaler: the
        gradients are the true ones, so they are clipped like in fp32. fp16 (with its scaler) keeps the refusal.
        """
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)  # the plain, unscaled clipping
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_fit_start(self) -> None:
        # The loss and optimizer are not constructor values Lightning records (they are objects): add their settings
        # to the hyperparameters it logs next (TensorBoard's HParams tab, hparams.yaml). Checkpoints keep `hparams`.
        self._hparams_initial = AttributeDict({**self.hparams_initial, **self.training_summary()})
        checks.warn_on_emulated_bf16(self.trainer)
        if self.batch_is_the_negatives:
            checks.warn_on_accumulation(self.trainer)
        checks.check_batch_embedding(self.trainer, self.batch_embedding)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record how to rebuild the encoder alone; a LoRA stage's checkpoint holds only what trains (the adapter).

        The frozen base of a LoRA stage is its input folder: resuming reloads it in ``configure_model`` first, then
        restores the adapter (see :meth:`on_load_checkpoint`), so the checkpoint stays a few MB.
        """
        checkpoint[ENCODER_SETTINGS_KEY] = {
            "settings": self.settings.as_dict(),
            "stage": f"{type(self).__module__}:{type(self).__qualname__}",
            "encoder_alone_is_exact": self.encoder_alone_is_exact,
        }
        if self.settings.lora is None:
            return
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint[FROZEN_BASE_KEY] = self.settings.backbone

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill an adapter-only checkpoint's frozen weights from the base just loaded, so loading stays strict."""
        if FROZEN_BASE_KEY not in checkpoint:
            return
        self.configure_model()
        fill_frozen_weights(self, checkpoint["state_dict"], f"of {type(self).__name__}")

    # -------------------------------------------------------------- optimiser
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups, from the (possibly wrapped) model the trainer runs."""
        model = self.trainer.model if self._trainer is not None else self
        return decay_groups(model.named_parameters())

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(unique_group_names(self.parameter_groups()))
        total = int(self.trainer.estimated_stepping_batches)
        schedule = warmup_schedule(optimizer, self.hparams.scheduler, self.hparams.warmup_ratio, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------- STS eval
    def setup(self, stage: str) -> None:
        self.configure_model()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        sets = evaluation_sets(datamodule)
        sts_names = list(sets.sts_val_names)
        # other held-out loaders (e.g. MNTP's held-out text) come first, the STS sets last
        self.sts_val_offset = len(sets.val_names) - len(sts_names)
        self.val_metrics = STSMetrics(sts_names)
        self.test_metrics = STSMetrics(list(sets.test_names))

    def is_sts_loader(self, dataloader_idx: int) -> bool:
        """Whether validation loader ``dataloader_idx`` is one of the data module's STS sets."""
        return dataloader_idx >= self.sts_val_offset

    def _log_scores(self, prefix: str, metrics: STSMetrics) -> None:
        for name, value in metrics.compute().items():
            self.log(f"{prefix}/{name}", value, add_dataloader_idx=False)

    def validation_step(self, batch: PairBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Score STS loaders; stages with other validation loaders (before the STS ones) override and delegate."""
        self.val_metrics.update(self.embed, batch, dataloader_idx - self.sts_val_offset)

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", self.val_metrics)

    def test_step(self, batch: PairBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.test_metrics.update(self.embed, batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_metrics)
