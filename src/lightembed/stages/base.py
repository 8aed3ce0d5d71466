"""EmbeddingModule: the part every stage shares — load a backbone, encode and pool, optimise, validate on STS."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_warn
from torch import Tensor, nn
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef
from transformers import get_scheduler

from lightembed import gradcache
from lightembed.backbones import load_backbone, load_tokenizer
from lightembed.data.collators import PairCollator
from lightembed.length_chunks import embed_by_length
from lightembed.lora import LoRASettings, apply_lora, load_quantized
from lightembed.pooling import POOLING_STRATEGIES, pool
from lightembed.precision import cpu_has_fast_bf16
from lightembed.strategies import shard_blocks

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# checkpoint key marking an adapter-only state dict; its value is the base the frozen weights come from
FROZEN_BASE_KEY = "lightembed_frozen_base"
STAGE_CLASS_KEY = "lightembed_stage_class"  # "module:QualName" of the stage, so a generic loader rebuilds it


SHARDED = (FSDPStrategy, ModelParallelStrategy)  # strategies whose every forward pass gathers weights across ranks
FUSED_ADAMW_DEVICES = ("cpu", "cuda", "xpu", "mps")  # device types with torch's fused AdamW kernel


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW with the usual fine-tuning defaults (lr 2e-5, weight decay 0.01).

    Fused (one kernel over every weight) where torch has that kernel, as transformers' Trainer defaults to: the same
    update, several times faster (all-MiniLM-L6-v2 on 2 CPU cores: 0.02 s a step instead of 0.1 s).
    """
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = all(p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01, fused=fused)


class EmbeddingModule(L.LightningModule):
    """A text encoder: backbone + pooling, with ``encode`` for inference and STS validation for every stage.

    Subclasses add a ``training_step``; this class owns model loading (idempotent ``configure_model``, FSDP-safe),
    the optimizer and warmup schedule, and STS validation/test metrics (cosine Spearman, logged as
    ``val/<set>_spearman`` and ``test/<set>_spearman``, plus ``val/spearman_mean`` over the sets).

    Args:
        model: backbone as a Hub id, local folder, or ``packaged:<name>``.
        pooling: one of ``cls``, ``mean``, ``max``, ``last_token``, ``weighted_mean``.
        max_length: token limit used by ``encode`` (the data module takes the same value through a CLI link).
        normalize: L2-normalise the output of ``encode`` and of an exported model.
        dtype: weight dtype of the backbone (``float32``; ``bfloat16`` for bf16-true training).
        bidirectional: for decoders, switch attention to bidirectional (``None`` keeps the family default).
        dropout: every dropout rate of the backbone (hidden and attention); ``None`` keeps the model's own.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant) to save memory.
        lora: train a LoRA adapter instead of every weight (``None``: full fine-tuning).
        quantization: ``4bit`` loads the base with bitsandbytes NF4 (QLoRA; needs ``lora``).
        optimizer: builds the optimizer from parameter groups (weight decay is off for biases and norms).
        warmup_ratio: fraction of the training steps spent warming the learning rate up from 0 (rounded up).
        scheduler: learning-rate shape after warmup.
    """

    # Contrastive stages set these from their constructor (``micro_batch_size``, ``gather_across_devices``).
    micro_batch_size: int | None = None
    gather_across_devices: bool = False
    length_chunking: float | None = None  # ContrastiveModule's option: see lightembed.length_chunks
    batch_is_the_negatives = False  # the loss compares rows of a batch: accumulation is not a bigger batch

    def __init__(
        self,
        model: str = "packaged:all-MiniLM-L6-v2",
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
        super().__init__()
        if quantization != "none" and dropout is not None:
            raise ValueError("`dropout` is not supported with `quantization` yet: leave it unset for QLoRA")
        if quantization != "none" and lora is None:
            raise ValueError(f"quantization={quantization!r} trains an adapter on a frozen base: also set `lora`")
        if pooling not in POOLING_STRATEGIES:
            raise ValueError(
                f"unknown pooling {pooling!r} (option `pooling`); choose one of {list(POOLING_STRATEGIES)}"
            )
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.save_hyperparameters(ignore=["optimizer", "loss"])
        # hparams hold plain values (LightningCLI and checkpoints store the settings as a dict)
        self.lora_settings = LoRASettings(**lora) if isinstance(lora, dict) else lora
        if self.lora_settings is not None:  # plain values, so `torch.load(weights_only=True)` reads the checkpoint
            self.hparams["lora"] = dataclasses.asdict(self.lora_settings)
        self.model_name = model
        self.pooling = pooling
        self.max_length = max_length
        self.normalize = normalize
        self.optimizer_factory = optimizer
        self.tokenizer = load_tokenizer(model)
        self.backbone: nn.Module | None = None
        self.val_names: list[str] = []
        self.test_names: list[str] = []
        self.val_metrics = nn.ModuleList()
        self.test_metrics = nn.ModuleList()
        self.sts_val_offset = 0
        self._sharded = False
        self._grads_from_step = False

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Load the backbone once (Lightning may call this several times, e.g. under FSDP or on reload)."""
        if self.backbone is not None:
            self._shard()  # built before the strategy set a device mesh (e.g. by `setup` or a test)
            return
        hp = self.hparams
        if hp.quantization == "4bit":
            backbone = load_quantized(hp.model, compute_dtype="float32", bidirectional=hp.bidirectional)
        else:
            backbone = load_backbone(hp.model, dtype=hp.dtype, bidirectional=hp.bidirectional, dropout=hp.dropout)
        self.backbone = apply_lora(backbone, self.lora_settings) if self.lora_settings is not None else backbone
        self.backbone.train(self.training)  # from_pretrained returns eval mode; dropout must follow the module
        if hp.gradient_checkpointing:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._shard()

    def _shard(self) -> None:
        """Under FSDP2 (``FSDP2Strategy``: a device mesh is set) shard each block with ``fully_shard``, once."""
        mesh = self.device_mesh if self._trainer is not None else None
        if mesh is None or self._sharded:
            return
        shard_blocks(self.backbone, mesh)
        self._sharded = True

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        """Run the backbone on tokenised features and pool: ``(B, L)`` ids -> ``(B, H)`` embeddings."""
        if self.backbone is None:
            self.configure_model()
        inputs = {k: features[k] for k in MODEL_INPUTS if k in features}
        hidden = self.backbone(**inputs).last_hidden_state  # (B, L, H)
        return pool(hidden, features["attention_mask"], self.pooling, pool_mask=features.get("pool_mask"))

    def contrastive_loss(
        self,
        fields: Mapping[str, Mapping[str, Tensor]],
        loss_fn: Callable[[dict[str, Tensor]], Tensor],
        batch_idx: int = 0,
    ) -> Tensor:
        """Embed each field (``{"anchor": features, ...}``) and return ``loss_fn({field: (B, H)})``.

        With ``micro_batch_size`` set this is a GradCache step (:func:`lightembed.gradcache.cached_loss`): the
        embeddings are computed in micro-batches and the gradients of all but the last micro-batch are accumulated
        here, so the trainer's zero-grad for this step is done before them (see :meth:`optimizer_zero_grad`).
        With ``length_chunking`` set the texts of all fields are embedded in length-sorted chunks
        (:func:`lightembed.length_chunks.embed_by_length`): the same embeddings with less padding.
        """
        if self.micro_batch_size is None:
            if self.length_chunking is not None:
                return loss_fn(embed_by_length(self.embed, fields, self.length_chunking))
            return loss_fn({name: self.embed(features) for name, features in fields.items()})
        grad_scale = 1.0
        if self._trainer is not None and self.trainer.training:
            accumulate = self.trainer.accumulate_grad_batches
            grad_scale = 1.0 / accumulate  # Lightning divides the returned loss by it before backward
            if batch_idx % accumulate == 0:  # Lightning would zero the gradients after this step: do it before
                optimizers = self.optimizers(use_pl_optimizer=False)
                for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
                    optimizer.zero_grad()
                self._grads_from_step = True
        return gradcache.cached_loss(self.embed, fields, loss_fn, self.micro_batch_size, grad_scale=grad_scale)

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
        """Check the scaling options against the trainer: accumulation semantics, GradCache sizes and precision."""
        trainer = self.trainer
        if isinstance(trainer.accelerator, CPUAccelerator) and "bf16" in str(trainer.precision):
            if not cpu_has_fast_bf16():
                rank_zero_warn(
                    f"precision={trainer.precision!r} on a CPU without native bf16 "
                    f"({torch.backends.cpu.get_cpu_capability()}): bf16 is emulated here and runs several times "
                    "slower than fp32. Train in fp32: `--trainer.precision 32-true` (Trainer(precision='32-true'))."
                )
        if self.batch_is_the_negatives and trainer.accumulate_grad_batches > 1:
            rank_zero_warn(
                f"accumulate_grad_batches={trainer.accumulate_grad_batches} averages gradients of separate batches; "
                "it is not a bigger contrastive batch (each loss still sees only its own batch's negatives). For "
                "more in-batch negatives use a bigger batch with `micro_batch_size` (GradCache) and/or "
                "`gather_across_devices`."
            )
        if self.length_chunking is not None and trainer.world_size > 1 and isinstance(trainer.strategy, SHARDED):
            raise ValueError(
                f"length_chunking with {type(trainer.strategy).__name__} on {trainer.world_size} processes: the number "
                "of chunks depends on each rank's text lengths, and every forward pass of a sharded model is a "
                "collective all ranks must make. Use DDP, or leave length_chunking unset."
            )
        if self.micro_batch_size is None:
            return
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(
                f"micro_batch_size (GradCache) does not support precision={trainer.precision!r} with a gradient "
                "scaler: use bf16-mixed, bf16-true or 32-true"
            )
        batch_size = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if batch_size is not None and batch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size={self.micro_batch_size} does not divide the data's batch_size={batch_size}: "
                "choose a divisor so every micro-batch has the same size"
            )

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        normalize: bool | None = None,
        precision: Literal["float32", "bfloat16"] = "float32",
        instruction: str | None = None,
    ) -> Tensor:
        """Embed texts: ``N`` strings -> ``(N, H)`` float32 tensor on CPU, in the input order.

        Texts are sorted by their token count so each batch pads (almost) nothing, and run under
        ``torch.inference_mode``; ``precision="bfloat16"`` runs under bf16 autocast. ``instruction`` is prefixed to
        every text and excluded from pooling (instructed decoders, LLM2Vec).
        """
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"encode: text #{i} is empty or not a string: {text!r}")
        self.configure_model()
        normalize = self.normalize if normalize is None else normalize
        collator = PairCollator(self.tokenizer, self.max_length)
        prefix = instruction or ""
        # One cheap pass (no padding, no tensors) for the token counts: sorting by characters leaves ~30% padding
        # on STS-B sentences, sorting by tokens almost none. Longest first, so a too-large batch fails at once.
        counts = self.tokenizer([prefix + t for t in texts], truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(counts[i]))
        was_training = self.training
        self.eval()
        chunks = []
        try:
            with torch.inference_mode(), self._autocast(precision):
                for start in range(0, len(order), batch_size):
                    batch = [texts[i] for i in order[start : start + batch_size]]
                    features = {k: v.to(self.device) for k, v in collator.encode_texts(batch, instruction).items()}
                    chunks.append(self.embed(features).float().cpu())
        finally:
            self.train(was_training)
        if not chunks:
            return torch.empty(0, self.embedding_dim)
        sorted_embeddings = torch.cat(chunks).clone()  # (N, H) in length order; a normal tensor, not an inference one
        embeddings = torch.empty_like(sorted_embeddings)
        embeddings[torch.tensor(order)] = sorted_embeddings
        return F.normalize(embeddings, dim=-1) if normalize else embeddings

    @property
    def embedding_dim(self) -> int:
        self.configure_model()
        return self.backbone.config.hidden_size

    def _autocast(self, precision: str) -> contextlib.AbstractContextManager:
        if precision == "bfloat16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        if precision != "float32":
            raise ValueError(f"unknown precision {precision!r}; choose float32 or bfloat16")
        return contextlib.nullcontext()

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A LoRA stage's checkpoint holds only what trains (the adapter): the frozen base is its input folder.

        For SmolLM2-135M this turns a 540 MB checkpoint into a few MB; resuming reloads the base from
        ``model`` in ``configure_model`` first, then restores the adapter (see ``on_load_checkpoint``).
        """
        checkpoint[STAGE_CLASS_KEY] = f"{type(self).__module__}:{type(self).__qualname__}"
        if self.lora_settings is None:
            return
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k in trainable}
        checkpoint[FROZEN_BASE_KEY] = self.hparams.model

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill an adapter-only checkpoint's frozen weights from the base just loaded, so loading stays strict."""
        if FROZEN_BASE_KEY not in checkpoint:
            return
        self.configure_model()
        state = checkpoint["state_dict"]
        missing_trainable = [n for n, p in self.named_parameters() if p.requires_grad and n not in state]
        if missing_trainable:
            raise KeyError(
                f"adapter-only checkpoint lacks trainable weights {missing_trainable[:3]} (of {len(missing_trainable)})"
                f": was it written with other `lora` settings than {self.lora_settings}?"
            )
        for name, value in self.state_dict().items():
            state.setdefault(name, value)

    # -------------------------------------------------------------- optimiser
    def _parameter_groups(self) -> list[dict[str, Any]]:
        model = self.trainer.model if self._trainer is not None else self
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        decay = [p for n, p in named if p.ndim >= 2]
        no_decay = [p for n, p in named if p.ndim < 2]
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self._parameter_groups())
        total = int(self.trainer.estimated_stepping_batches)
        warmup = math.ceil(self.hparams.warmup_ratio * total)  # rounded up, as transformers' Trainer does
        schedule = get_scheduler(self.hparams.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------- STS eval
    def setup(self, stage: str) -> None:
        self.configure_model()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        all_val = list(getattr(datamodule, "val_names", None) or [])
        # Data modules that put other validation loaders first (e.g. held-out text) name their STS sets apart.
        self.val_names = list(getattr(datamodule, "sts_val_names", all_val))
        self.sts_val_offset = len(all_val) - len(self.val_names)
        self.test_names = list(getattr(datamodule, "test_names", None) or [])
        self.val_metrics = self._sts_metrics(len(self.val_names))
        self.test_metrics = self._sts_metrics(len(self.test_names))

    def _sts_metrics(self, n: int) -> nn.ModuleList:
        return nn.ModuleList(
            nn.ModuleDict({"spearman": SpearmanCorrCoef(), "pearson": PearsonCorrCoef()}) for _ in range(n)
        )

    def _sts_update(self, metrics: nn.ModuleList, batch: dict[str, Any], dataloader_idx: int) -> None:
        if dataloader_idx >= len(metrics):
            raise ValueError(
                f"STS dataloader #{dataloader_idx} has no name: give the data module `val_names`/`test_names`"
            )
        anchor = self.embed(batch["anchor"]).float()  # (B, H)
        positive = self.embed(batch["positive"]).float()  # (B, H)
        cosine = F.cosine_similarity(anchor, positive, dim=-1)  # (B,)
        for metric in metrics[dataloader_idx].values():
            metric.update(cosine, batch["score"].float())

    def _sts_log(self, prefix: str, names: list[str], metrics: nn.ModuleList) -> None:
        spearmans = []
        for name, group in zip(names, metrics, strict=True):
            spearman = group["spearman"].compute() * 100
            self.log(f"{prefix}/{name}_spearman", spearman, add_dataloader_idx=False)
            self.log(f"{prefix}/{name}_pearson", group["pearson"].compute() * 100, add_dataloader_idx=False)
            spearmans.append(spearman)
            for metric in group.values():
                metric.reset()
        if spearmans:
            self.log(f"{prefix}/spearman_mean", torch.stack(spearmans).mean(), add_dataloader_idx=False)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Score STS loaders; stages with other validation loaders (before the STS ones) override and delegate."""
        self._sts_update(self.val_metrics, batch, dataloader_idx - self.sts_val_offset)

    def on_validation_epoch_end(self) -> None:
        self._sts_log("val", self.val_names, self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._sts_update(self.test_metrics, batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._sts_log("test", self.test_names, self.test_metrics)
