"""Encoder: a backbone, its tokenizer, pooling and normalisation — the model a user embeds text with.

The training stages hold an ``Encoder`` and keep the training concerns (loss, optimiser, validation) to themselves;
``Encoder.from_pretrained`` loads any trained or pretrained one for inference, and ``save_pretrained`` writes the
sentence-transformers folder that ``SentenceTransformer(folder)`` and ``Encoder.from_pretrained(folder)`` both read.

>>> encoder = Encoder.from_pretrained("packaged:all-MiniLM-L6-v2")
>>> encoder.encode(["a sentence", "another one"]).shape
torch.Size([2, 384])
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightembed.attention_kernels import check_attention_kernel, use_attention_kernel
from lightembed.backbones import load_backbone, load_tokenizer, resolve_model_path
from lightembed.data.batches import Features
from lightembed.data.collators import PairCollator
from lightembed.lora import LoRASettings, apply_lora, load_quantized, merge_into_base, save_adapter
from lightembed.model_card import ModelCardData, render_model_card
from lightembed.pooling import POOLING_STRATEGIES, pool
from lightembed.st_folder import (
    SETTINGS_FILE,
    copy_pooler_weights,
    folder_prompts,
    folder_settings,
    write_json,
    write_st_files,
    write_st_prompts,
)
from lightembed.truncation import check_layers, check_truncate_dim, keep_first_layers, truncate_embeddings

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Checkpoint keys a stage writes so an Encoder can be rebuilt from a Lightning checkpoint without the stage class.
ENCODER_SETTINGS_KEY = "lightembed_encoder"
FROZEN_BASE_KEY = "lightembed_frozen_base"  # an adapter-only checkpoint: its value is where the frozen weights are


@runtime_checkable
class TextEncoder(Protocol):
    """What evaluators need of a lightembed model: an :class:`Encoder`, or a training stage that holds one (its
    ``encode`` embeds as the stage does, e.g. with token deletion at inference)."""

    settings: EncoderSettings

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        normalize: bool | None = None,
        precision: Literal["float32", "bfloat16"] = "float32",
        instruction: str | None = None,
    ) -> Tensor: ...


@dataclass
class EncoderSettings:
    """The backbone and how it is loaded, pooled and (for training) adapted: the stage options that belong to the
    encoder rather than to what a stage trains.

    Attributes:
        backbone: a Hub id, a local folder (an HF model or a lightembed/sentence-transformers export), or
            ``packaged:<name>``.
        pooling: one of ``cls``, ``mean``, ``max``, ``last_token``, ``weighted_mean``.
        max_length: token limit per text (the data module takes the same value through a CLI link).
        normalize: L2-normalise the output of ``encode`` and of an exported model.
        dtype: weight dtype of the backbone (``float32``; ``bfloat16`` for bf16-true training).
        bidirectional: for decoders, switch attention to bidirectional (``None`` keeps the family default).
        dropout: every dropout rate of the backbone (hidden and attention); ``None`` keeps the model's own.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant) to save memory.
        lora: train a LoRA adapter instead of every weight (``None``: full fine-tuning).
        quantization: ``4bit`` loads the base with bitsandbytes NF4 (QLoRA; needs ``lora``).
        truncate_dim: ``encode`` (and an export) keeps the first ``d`` dimensions, normalised after truncation when
            ``normalize`` is on (Matryoshka; ``None``: all). The training forward is not truncated.
        layers: run only the first ``k`` transformer layers; the others are removed on loading (``None``: all).
        attention_kernel: SDPA kernel on CPU, ``auto``, ``flash`` or ``math`` (:mod:`lightembed.attention_kernels`).
    """

    backbone: str = "packaged:all-MiniLM-L6-v2"
    pooling: str = "mean"
    max_length: int = 128
    normalize: bool = False
    dtype: str = "float32"
    bidirectional: bool | None = None
    dropout: float | None = None
    gradient_checkpointing: bool = False
    lora: LoRASettings | None = None
    quantization: Literal["none", "4bit"] = "none"
    truncate_dim: int | None = None
    layers: int | None = None
    attention_kernel: Literal["auto", "flash", "math"] = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.lora, Mapping):  # from YAML or a checkpoint's plain hyperparameters
            self.lora = LoRASettings(**self.lora)
        if self.pooling not in POOLING_STRATEGIES:
            raise ValueError(
                f"unknown pooling {self.pooling!r} (option `encoder.pooling`); choose one of {list(POOLING_STRATEGIES)}"
            )
        if self.max_length < 1:
            raise ValueError(f"encoder.max_length must be >= 1, got {self.max_length}")
        check_truncate_dim(self.truncate_dim, option="encoder.truncate_dim")
        check_layers(self.layers, option="encoder.layers")
        check_attention_kernel(self.attention_kernel)
        if self.quantization != "none" and self.dropout is not None:
            raise ValueError("`encoder.dropout` is not supported with `quantization` yet: leave it unset for QLoRA")
        if self.quantization != "none" and self.lora is None:
            raise ValueError(
                f"encoder.quantization={self.quantization!r} trains an adapter on a frozen base: also set "
                "`encoder.lora`"
            )

    @classmethod
    def of(cls, value: EncoderSettings | Mapping[str, Any]) -> EncoderSettings:
        """Settings from an instance or from plain values (a checkpoint's hyperparameters, a YAML mapping)."""
        return value if isinstance(value, EncoderSettings) else cls(**value)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, so a checkpoint holding them loads with ``torch.load(weights_only=True)``."""
        return dataclasses.asdict(self)


class Encoder(nn.Module):
    """Text -> embedding: ``backbone`` (a Hugging Face model, possibly with a LoRA adapter) + tokenizer + pooling.

    The backbone is loaded by :meth:`build` (idempotent), so a training stage can defer it to Lightning's
    ``configure_model`` (FSDP-safe); every other method builds it on first use.

    Args:
        settings: the backbone and how it is loaded and pooled.
        tokenizer: the backbone's tokenizer; ``None`` loads it from ``settings.backbone``.

    Attributes:
        prompts: named instructions (sentence-transformers "prompts"), e.g. ``{"query": "Retrieve ...: "}``; read from
            and written to ``config_sentence_transformers.json``.
        default_prompt_name: the prompt :meth:`encode` applies when given no instruction (``None``: none).
    """

    def __init__(self, settings: EncoderSettings, tokenizer: Any = None) -> None:
        super().__init__()
        self.settings = settings
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(settings.backbone)
        self.backbone: nn.Module | None = None
        self.prompts: dict[str, str] = {}
        self.default_prompt_name: str | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        model: str,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        truncate_dim: int | None = None,
        layers: int | None = None,
        bidirectional: bool | None = None,
    ) -> Encoder:
        """Load an encoder from a Hub id, a local folder, a ``packaged:`` name or a Lightning ``.ckpt`` of any stage.

        Settings not given are read from the model (a lightembed export, a sentence-transformers folder, or the
        checkpoint); otherwise mean pooling, no normalisation, 512 tokens. ``truncate_dim`` and ``layers`` give a
        smaller, faster model; ``bidirectional`` switches a decoder's attention. In eval mode."""
        given = {"pooling": pooling, "normalize": normalize, "max_length": max_length, "bidirectional": bidirectional}
        given.update(truncate_dim=truncate_dim, layers=layers)
        overrides = {k: v for k, v in given.items() if v is not None}
        if model.endswith(".ckpt"):
            encoder = _from_checkpoint(Path(resolve_model_path(model)), overrides)
        else:
            settings: dict[str, Any] = {"pooling": "mean", "normalize": False, "max_length": 512}
            local = Path(resolve_model_path(model))
            if local.is_dir():
                settings.update(folder_settings(local))
            encoder = cls(EncoderSettings(backbone=model, **{**settings, **overrides}))
            encoder.build()
            if local.is_dir():
                encoder.prompts, encoder.default_prompt_name = folder_prompts(local)
        if device is not None:
            encoder.to(device)
        return encoder.eval()

    def build(self) -> None:
        """Load the backbone once: quantized (QLoRA) or at ``dtype``, with a LoRA adapter and checkpointing if set."""
        if self.backbone is not None:
            return
        s = self.settings
        if s.quantization == "4bit":
            backbone = load_quantized(s.backbone, compute_dtype="float32", bidirectional=s.bidirectional)
        else:
            backbone = load_backbone(s.backbone, dtype=s.dtype, bidirectional=s.bidirectional, dropout=s.dropout)
        if s.layers is not None:  # before LoRA, so no adapter is made for the layers removed
            keep_first_layers(backbone, s.layers, option="encoder.layers")
        check_truncate_dim(s.truncate_dim, backbone.config.hidden_size, option="encoder.truncate_dim")
        use_attention_kernel(backbone, s.attention_kernel)
        self.backbone = apply_lora(backbone, s.lora) if s.lora is not None else backbone
        self.backbone.train(self.training)  # from_pretrained returns eval mode; dropout must follow the module
        if s.gradient_checkpointing:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ------------------------------------------------------------------ settings
    @property
    def pooling(self) -> str:
        return self.settings.pooling

    @property
    def normalize(self) -> bool:
        return self.settings.normalize

    @property
    def max_length(self) -> int:
        return self.settings.max_length

    @property
    def embedding_dim(self) -> int:
        self.build()
        return self.backbone.config.hidden_size

    @property
    def device(self) -> torch.device:
        self.build()
        return next(self.backbone.parameters()).device

    # ------------------------------------------------------------------ embedding
    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Run the backbone on tokenised features and pool: ``(B, L)`` ids -> ``(B, H)`` embeddings."""
        self.build()
        inputs = {k: features[k] for k in MODEL_INPUTS if k in features}
        hidden = self.backbone(**inputs).last_hidden_state  # (B, L, H)
        return pool(hidden, features["attention_mask"], self.pooling, pool_mask=features.get("pool_mask"))

    def tokenize(self, texts: Sequence[str], instruction: str | None = None) -> Features:
        """Tokenise ``texts`` as training batches are (dynamic padding); an instruction is excluded from pooling."""
        return PairCollator(self.tokenizer, self.max_length).encode_texts(list(texts), instruction)

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        normalize: bool | None = None,
        precision: Literal["float32", "bfloat16"] = "float32",
        instruction: str | None = None,
        *,
        prompt_name: str | None = None,
        device: str | torch.device | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = False,
        truncate_dim: int | None = None,
    ) -> Tensor | np.ndarray:
        """Embed texts: ``N`` strings -> ``(N, H)`` (or ``(N, truncate_dim)``) float32 on CPU, in the input order.

        Texts are sorted by their token count so each batch pads (almost) nothing, and run under
        ``torch.inference_mode``; ``precision="bfloat16"`` runs under bf16 autocast. ``instruction`` is prefixed to
        every text and excluded from pooling (instructed decoders, LLM2Vec); ``prompt_name`` picks one of
        :attr:`prompts` instead, and with neither the default prompt (if any) is used, as in sentence-transformers.

        The other options mean what they mean in ``SentenceTransformer.encode``: ``device`` moves the model there
        first, ``show_progress_bar`` (``None``: when logging is at INFO or DEBUG) shows one tick per batch,
        ``convert_to_numpy`` returns a NumPy array instead of a tensor, ``normalize`` L2-normalises (``None``: the
        model's own setting, applied after truncation), ``truncate_dim`` keeps the first dimensions (``None``: the
        model's own setting).
        """
        if instruction is None:
            name = prompt_name or self.default_prompt_name
            if name is not None and name not in self.prompts:
                raise ValueError(f"encode: unknown prompt_name {name!r}; the model has prompts {sorted(self.prompts)}")
            instruction = self.prompts.get(name) if name else None
        options = {"device": device, "show_progress_bar": show_progress_bar, "convert_to_numpy": convert_to_numpy}
        options["truncate_dim"] = truncate_dim
        return encode_texts(self, self, self.forward, texts, batch_size, normalize, precision, instruction, **options)

    # ------------------------------------------------------------------ export
    def merged_backbone(self, adapter_folder: str | Path) -> nn.Module:
        """The backbone as a plain model: a LoRA/QLoRA adapter is saved to ``adapter_folder`` and merged into the
        full-precision base reloaded from disk (:func:`lightembed.lora.merge_into_base`); others as they are."""
        self.build()
        if not isinstance(self.backbone, PeftModel):
            return self.backbone
        save_adapter(self.backbone, adapter_folder)
        base = self.backbone.peft_config[self.backbone.active_adapter].base_model_name_or_path
        merged = merge_into_base(base, adapter_folder, bidirectional=self.settings.bidirectional)
        # the base reloaded from disk has every layer (the adapter has none for the removed ones): cut it again
        return keep_first_layers(merged, self.settings.layers) if self.settings.layers is not None else merged

    def save_pretrained(self, folder: str | Path, card: ModelCardData | None = None) -> Path:
        """Write a sentence-transformers folder: HF weights + tokenizer, pooling, optional normalisation, prompts and
        a model card (``README.md``; ``card`` adds what training knows: loss, data, scores).

        A LoRA backbone is written merged (its adapter is kept in ``<folder>/adapter`` for a next stage's
        ``LoRASettings.init_from``). The base model's pooler weights, which lightembed does not load (pooling is
        done on token states), are copied over, so the folder is the complete base architecture. ``lightembed.json``
        (pooling, normalize, max_length) is written last, so its presence marks a complete export; the folder is also
        a plain HF model folder a next stage can start from. Returns the folder.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # a re-export that dies half way must not leave the marker of the previous, complete export behind
        (folder / SETTINGS_FILE).unlink(missing_ok=True)
        backbone = self.merged_backbone(folder / "adapter")
        backbone.save_pretrained(folder)
        copy_pooler_weights(self.settings.backbone, folder, getattr(backbone, "base_model_prefix", ""))
        self.tokenizer.save_pretrained(folder)
        truncate_dim = self.settings.truncate_dim
        write_st_files(folder, self.pooling, self.normalize, self.embedding_dim, self.max_length, truncate_dim)
        write_st_prompts(folder, self.prompts, self.default_prompt_name, truncate_dim)
        dimension = truncate_dim or self.embedding_dim
        model = {"base_model": self.settings.backbone, "dimension": dimension, "prompts": self.prompts}
        model.update(max_length=self.max_length, pooling=self.pooling, normalize=self.normalize)
        (folder / "README.md").write_text(render_model_card(card or ModelCardData(), model))
        write_json(
            folder / SETTINGS_FILE,
            {"pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length}
            | ({"truncate_dim": truncate_dim} if truncate_dim is not None else {}),
        )
        return folder


def encode_texts(
    model: nn.Module,
    encoder: Encoder,
    embed: Callable[[Features], Tensor],
    texts: Sequence[str],
    batch_size: int = 64,
    normalize: bool | None = None,
    precision: str = "float32",
    instruction: str | None = None,
    *,
    device: str | torch.device | None = None,
    show_progress_bar: bool | None = None,
    convert_to_numpy: bool = False,
    truncate_dim: int | None = None,
) -> Tensor | np.ndarray:
    """:meth:`Encoder.encode` with the embedding function ``embed`` of ``model`` (the encoder itself, or a stage that
    embeds otherwise, e.g. with token deletion at inference), run in eval mode on length-sorted batches:
    ``(N, H)`` float32 on CPU (a NumPy array with ``convert_to_numpy``); ``(N, d)`` with a ``truncate_dim`` (given, or
    the encoder's), normalised after truncation as sentence-transformers' ``encode`` does."""
    if isinstance(texts, str):
        raise TypeError(f"encode takes a list of texts, got one string {texts[:40]!r}: pass [text]")
    for i, text in enumerate(texts):
        # the empty string is a text (sentence-transformers embeds it as [CLS] [SEP]); None or a number is not
        if not isinstance(text, str):
            raise ValueError(f"encode: text #{i} is not a string: {text!r}")
    if batch_size < 1:
        raise ValueError(f"encode: batch_size must be >= 1, got {batch_size}")
    encoder.build()
    truncate_dim = encoder.settings.truncate_dim if truncate_dim is None else truncate_dim
    check_truncate_dim(truncate_dim, encoder.embedding_dim, option="encode: truncate_dim")
    if device is not None:
        model.to(device)
    if show_progress_bar is None:
        show_progress_bar = log.getEffectiveLevel() <= logging.INFO
    normalize = encoder.normalize if normalize is None else normalize
    prefix = instruction or ""
    # One cheap pass (no padding, no tensors) for the token counts: sorting by characters leaves much more padding
    # than sorting by tokens. Longest first, so a too-large batch fails at once.
    # (the tokenizer refuses an empty list: no texts, no counts)
    counts = (
        encoder.tokenizer([prefix + t for t in texts], truncation=True, max_length=encoder.max_length)
        if texts
        else {"input_ids": []}
    )
    order = sorted(range(len(texts)), key=lambda i: -len(counts["input_ids"][i]))
    was_training = model.training
    model.eval()
    device = encoder.device
    chunks = []
    try:
        with torch.inference_mode(), _autocast(precision, device):
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc="Batches", disable=not show_progress_bar):
                batch = [texts[i] for i in order[start : start + batch_size]]
                features = {k: v.to(device) for k, v in encoder.tokenize(batch, instruction).items()}
                chunks.append(embed(features).float().cpu())
    finally:
        model.train(was_training)
    if not chunks:
        embeddings = torch.empty(0, truncate_dim or encoder.embedding_dim)
    else:
        sorted_embeddings = torch.cat(chunks).clone()  # (N, H) in length order; a normal tensor, not an inference one
        embeddings = torch.empty_like(sorted_embeddings)
        embeddings[torch.tensor(order)] = sorted_embeddings  # (N, H) back in input order
        embeddings = truncate_embeddings(embeddings, truncate_dim)  # (N, H) -> (N, d)
        embeddings = F.normalize(embeddings, dim=-1) if normalize else embeddings
    return embeddings.numpy() if convert_to_numpy else embeddings


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "float32":
        raise ValueError(f"unknown precision {precision!r}; choose float32 or bfloat16")
    return contextlib.nullcontext()


def _from_checkpoint(path: Path, overrides: dict[str, Any]) -> Encoder:
    """The encoder a stage's Lightning checkpoint holds: its settings and the ``encoder.``-prefixed weights.

    An adapter-only checkpoint (a LoRA stage) holds the adapter alone: the frozen base is reloaded from the
    settings' backbone first.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    saved = checkpoint.get(ENCODER_SETTINGS_KEY)
    if saved is None:
        raise ValueError(f"{path} is not a lightembed stage checkpoint (it has no {ENCODER_SETTINGS_KEY!r} entry)")
    if not saved.get("encoder_alone_is_exact", True):
        raise ValueError(
            f"{path} was written by {saved.get('stage', 'a stage')} whose inference embedding needs more than the "
            "encoder (e.g. token deletion at inference): load it with that stage's `load_from_checkpoint` instead"
        )
    settings = EncoderSettings.of({**saved["settings"], **overrides})
    encoder = Encoder(settings)
    encoder.build()
    prefix = "encoder."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if overrides.get("layers") is not None:  # cut after training: the removed layers' weights are not loaded
        kept = encoder.state_dict().keys()
        state = {k: v for k, v in state.items() if k in kept}
    if FROZEN_BASE_KEY in checkpoint:
        fill_frozen_weights(encoder, state, str(path))
    encoder.load_state_dict(state)
    return encoder


def fill_frozen_weights(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Complete an adapter-only state dict (a LoRA stage's checkpoint) in place with ``model``'s frozen weights,
    just loaded from the base, so loading stays strict; every trainable weight must be in ``state``."""
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in state]
    if missing:
        raise KeyError(
            f"adapter-only checkpoint {source} lacks trainable weights {missing[:3]} (of {len(missing)}): was it "
            "written with other `encoder.lora` settings?"
        )
    for name, value in model.state_dict().items():
        state.setdefault(name, value)
