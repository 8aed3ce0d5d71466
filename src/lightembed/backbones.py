"""Load Hugging Face encoders and decoders as embedding backbones.

A model is named by a Hub id (``sentence-transformers/all-MiniLM-L6-v2``), a local folder, or a packaged name
(``packaged:all-MiniLM-L6-v2``, see :mod:`lightembed.packaged`). What lightembed may do with a model depends on its
*family* (the config's ``model_type``), looked up in :data:`FAMILIES`; an unknown family is an error that names it,
never a guess from the model's name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from lightembed.packaged import is_packaged, resolve_packaged

log = logging.getLogger(__name__)


class _ExpectedPoolerReport(logging.Filter):
    """Drop transformers' load report when all it lists is the checkpoint's pooler weights.

    BERT-like families load without their pooler (``add_pooling_layer=False``: pooling is lightembed's), so the
    pooler weights a checkpoint holds are always "unexpected"; that report says nothing a user can act on. A report
    that names any other weight is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [line.split("|", 1)[0].strip() for line in message.splitlines()[1:] if "|" in line]
        keys = [key for key in rows if key and key != "Key" and not set(key) <= {"-", "+"}]
        return not (keys and all(key.startswith("pooler.") for key in keys))


logging.getLogger("transformers.modeling_utils").addFilter(_ExpectedPoolerReport())

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Family:
    """What lightembed knows about a model family.

    Attributes:
        kind: ``"encoder"`` (bidirectional already) or ``"decoder"`` (causal unless switched).
        padding_side: the padding side pooling and batching expect for this family.
        load_kwargs: extra keyword arguments for ``AutoModel.from_pretrained``.
        dropout_fields: the config fields that set the model's dropout rates (SimCSE's augmentation).
    """

    kind: str
    padding_side: str = "right"
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    dropout_fields: tuple[str, ...] = ()


_BERT_DROPOUT = ("hidden_dropout_prob", "attention_probs_dropout_prob")
_BERT_LIKE = Family("encoder", load_kwargs={"add_pooling_layer": False}, dropout_fields=_BERT_DROPOUT)
_DECODER = Family("decoder", dropout_fields=("attention_dropout",))
FAMILIES: dict[str, Family] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": Family("encoder", dropout_fields=_BERT_DROPOUT),
    "mpnet": _BERT_LIKE,
    "distilbert": Family("encoder", dropout_fields=("dropout", "attention_dropout")),
    "deberta-v2": Family("encoder", dropout_fields=_BERT_DROPOUT),
    "modernbert": Family("encoder", dropout_fields=("attention_dropout", "mlp_dropout", "embedding_dropout")),
    # Decoders whose attention honours ``config.is_causal`` in transformers 5 (bidirectional switch, LLM2Vec).
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma": _DECODER,
    "gemma2": _DECODER,
}


def resolve_model_path(name_or_path: str) -> str:
    """Map a packaged name to its folder and check that a local path exists; Hub ids pass through unchanged.

    Raises:
        FileNotFoundError: the name looks like a local path (absolute, relative with ``./`` or ``~``, or an existing
            parent folder) but nothing is there; the message gives the path tried.
    """
    if is_packaged(name_or_path):
        return str(resolve_packaged(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    looks_local = name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.endswith((".ckpt", ".safetensors"))
    if looks_local or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"model path {str(path.resolve())!r} does not exist (from {name_or_path!r})")
    return name_or_path


def family_of(config: PretrainedConfig, name: str = "") -> Family:
    """The :class:`Family` of a config; unknown families raise an error naming the ``model_type``."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported model family {model_type!r} (model {name or config.name_or_path!r}); "
            f"supported families: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "spm.model")
"""Files that hold a tokenizer's vocabulary (fast ``tokenizer.json``, WordPiece, BPE, sentencepiece); a model folder
needs one of them (or another sentencepiece ``*.model`` file)."""


def check_tokenizer_files(folder: Path) -> None:
    """Refuse a local model folder without tokenizer files: transformers would build an empty-vocabulary tokenizer
    from ``config.json`` alone and every text would become ``[UNK]``, without a warning."""
    names = sorted(p.name for p in folder.iterdir())
    if any(name in TOKENIZER_FILES or name.endswith(".model") for name in names):
        return
    raise FileNotFoundError(
        f"model folder {folder} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)} or a sentencepiece "
        f"*.model; it holds {names}): save the tokenizer of the model it came from into it "
        "(tokenizer.save_pretrained(folder)) or name a model that has one"
    )


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model; a tokenizer without a pad token gets one (EOS, else UNK) and a log line.

    Raises:
        FileNotFoundError: a local folder without tokenizer files (:func:`check_tokenizer_files`).
    """
    path = resolve_model_path(name_or_path)
    if Path(path).is_dir():
        check_tokenizer_files(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
        log.warning("tokenizer of %s has no pad token: padding with %r", name_or_path, fallback)
    return tokenizer


def set_bidirectional(model: PreTrainedModel, bidirectional: bool = True) -> None:
    """Switch a decoder's self-attention between causal and bidirectional via ``config.is_causal`` (LLM2Vec step 1).

    Encoders are bidirectional already; asking for causal attention on an encoder is an error.
    """
    family = family_of(model.config)
    if family.kind == "encoder":
        if not bidirectional:
            raise ValueError(f"{model.config.model_type} is an encoder: its attention cannot be made causal")
        return
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            config.is_causal = not bidirectional


def load_backbone(
    name_or_path: str,
    dtype: str = "float32",
    bidirectional: bool | None = None,
    attn_implementation: str | None = None,
    dropout: float | None = None,
) -> PreTrainedModel:
    """Load the base model (no task head) of an encoder or decoder.

    Args:
        name_or_path: Hub id, local folder, or ``packaged:<name>``.
        dtype: ``float32``, ``bfloat16`` or ``float16`` weights.
        bidirectional: for decoders, ``True`` switches to bidirectional attention; ``None`` keeps the family default.
        attn_implementation: passed to transformers (``sdpa``, ``eager``, or a registered custom function); ``None``
            lets transformers choose: ``sdpa`` where the family supports it (BERT, Llama, ...), else ``eager``
            (MPNet, DeBERTa-v2, Gemma2).
        dropout: set every dropout rate of the family (hidden and attention); ``None`` keeps the model's own.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (option `dtype`); choose one of {sorted(DTYPES)}")
    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path)
    family = family_of(config, name_or_path)
    overrides: dict[str, Any] = {}
    if dropout is not None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout} (option `dropout`)")
        overrides = {name: dropout for name in family.dropout_fields}
    model = AutoModel.from_pretrained(
        path, dtype=DTYPES[dtype], attn_implementation=attn_implementation, **family.load_kwargs, **overrides
    )
    if bidirectional is not None:
        set_bidirectional(model, bidirectional)
    return model


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The qualified name and ``nn.ModuleList`` of a model's transformer blocks (``encoder.layer`` of a BERT,
    ``layers`` of a Llama, inside a LoRA wrapper or not).

    The blocks are found generically, not by family: the ``nn.ModuleList`` whose items are all of a class the model
    lists in ``_no_split_modules`` (``BertLayer``, ``LlamaDecoderLayer``); the largest one if several.
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    lists = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) and all(type(m).__name__ in names for m in module)
    ]
    if not lists:
        blocks = sorted(names)
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of its `_no_split_modules` blocks {blocks}")
    return max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
