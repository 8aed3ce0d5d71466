"""LLM2Vec analyses (BehnamGhader et al. 2024, section 4): why bidirectional attention works on a decoder.

* :func:`layer_similarity`: run the same texts through a decoder with causal and with bidirectional attention and
  compare the hidden states token by token at every layer (cosine similarity, averaged over all real tokens). The
  paper finds them very close for Mistral (hinting at some bidirectional pre-training) and diverging for Llama.
* :func:`prefix_test`: the shared-prefix test. For triples ``q = (A, B)``, ``s+ = (A, C)``, ``s- = (A, D)`` pool
  only the tokens of the shared prefix ``A`` and ask whether ``cos(q, s+) > cos(q, s-)``. With causal attention the
  prefix states cannot see B/C/D, so both similarities are equal (accuracy 0, all ties); a model whose prefix states
  carry information about the future tokens ranks ``s+`` first. Default triples:
  :data:`~lightembed.evaluation.prefix_triples.PREFIX_TRIPLES`.

Both take a model name (Hub id, folder, ``packaged:<name>``), a loaded :class:`Encoder` or a transformers
model with its tokenizer. Layer 0 is the embedding layer; layer ``i`` the output of block ``i``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PretrainedConfig, PreTrainedModel

from lightembed.backbones import family_of, load_backbone, load_tokenizer, set_bidirectional
from lightembed.encoder import MODEL_INPUTS, Encoder
from lightembed.evaluation.prefix_triples import PREFIX_TRIPLES

TRIPLE_FIELDS = ("prefix", "query", "positive", "negative")


def load_decoder(
    model: str | Encoder | PreTrainedModel, tokenizer: Any = None, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, Any]:
    """``(backbone, tokenizer)`` of a decoder given by name, lightembed module, or transformers model + tokenizer.

    ``device`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``) moves the backbone there; ``None`` leaves it where it is (a name is
    loaded on the CPU). Hidden states come back on the CPU either way.
    """
    if isinstance(model, str):
        backbone, tokenizer = load_backbone(model), load_tokenizer(model)
    elif isinstance(model, Encoder):
        model.build()
        backbone, tokenizer = model.backbone, tokenizer or model.tokenizer
    else:
        backbone = model
        if tokenizer is None:
            raise ValueError("a transformers model needs its tokenizer (argument `tokenizer`)")
    config = getattr(backbone, "config", None)
    name = getattr(config, "name_or_path", "") or str(model)
    if family_of(config, name).kind != "decoder":
        raise ValueError(
            f"model {name!r} is an encoder ({config.model_type}): its attention is bidirectional already, so "
            "the causal/bidirectional analyses need a decoder (Llama, Mistral, Qwen, Gemma)"
        )
    if device is not None:
        backbone = backbone.to(device)
    return backbone.eval(), tokenizer


@contextlib.contextmanager
def attention(model: PreTrainedModel, bidirectional: bool) -> Iterator[None]:
    """Run a block with causal or bidirectional attention; every sub-config's ``is_causal`` is restored after."""
    saved = [
        (config, config.__dict__.get("is_causal", None))
        for module in model.modules()
        if isinstance(config := getattr(module, "config", None), PretrainedConfig)
    ]
    set_bidirectional(model, bidirectional)
    try:
        yield
    finally:
        for config, value in saved:
            if value is None:
                config.__dict__.pop("is_causal", None)
            else:
                config.is_causal = value


def _hidden_states(model: PreTrainedModel, features: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
    """All hidden states ``(layers + 1) x (B, L, H)`` of one batch, float32 on CPU."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in features.items() if k in MODEL_INPUTS}
    out = model(**inputs, output_hidden_states=True)
    return tuple(h.float().cpu() for h in out.hidden_states)


def _tokenize(tokenizer: Any, texts: list[str], max_length: int, offsets: bool = False) -> dict[str, Tensor]:
    return dict(
        tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_offsets_mapping=offsets,
        )
    )


@dataclass(frozen=True)
class LayerSimilarity:
    """Per layer: mean (and std) cosine similarity of causal vs bidirectional token states over ``tokens`` tokens."""

    layers: list[int]
    mean: list[float]
    std: list[float]
    texts: int
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def layer_similarity(
    model: str | Encoder | PreTrainedModel,
    texts: Sequence[str],
    tokenizer: Any = None,
    batch_size: int = 16,
    max_length: int = 128,
    device: str | torch.device | None = None,
) -> LayerSimilarity:
    """Cosine similarity between causal and bidirectional hidden states of a decoder, per layer (module docstring)."""
    texts = list(texts)
    if not texts:
        raise ValueError("layer_similarity needs at least one text")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"layer_similarity: text #{i} is empty or not a string: {text!r}")
    backbone, tokenizer = load_decoder(model, tokenizer, device)
    sums: Tensor | None = None
    squares: Tensor | None = None
    count = 0
    for start in range(0, len(texts), batch_size):
        features = _tokenize(tokenizer, texts[start : start + batch_size], max_length)
        with attention(backbone, bidirectional=False):
            causal = _hidden_states(backbone, features)
        with attention(backbone, bidirectional=True):
            bidirectional = _hidden_states(backbone, features)
        mask = features["attention_mask"].bool()  # (B, L)
        cosines = torch.stack(
            [F.cosine_similarity(c, b, dim=-1)[mask] for c, b in zip(causal, bidirectional, strict=True)]
        ).double()  # (layers + 1, tokens in batch)
        sums = cosines.sum(1) if sums is None else sums + cosines.sum(1)
        squares = cosines.square().sum(1) if squares is None else squares + cosines.square().sum(1)
        count += cosines.shape[1]
    mean = sums / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return LayerSimilarity(list(range(len(mean))), mean.tolist(), std.tolist(), len(texts), count)


def load_triples(source: str | Path | Sequence[Mapping[str, str]] | None = None) -> list[dict[str, str]]:
    """Triples from a list of dicts, a ``.jsonl`` file (``prefix, query, positive, negative``) or the defaults."""
    if source is None:
        rows: list[Any] = list(PREFIX_TRIPLES)
        where = "lightembed.evaluation.prefix_triples"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"triples file {str(path)!r} does not exist")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        where = str(path)
    else:
        rows, where = list(source), "the given triples"
    if not rows:
        raise ValueError(f"no triples in {where}")
    for i, row in enumerate(rows):
        missing = [f for f in TRIPLE_FIELDS if not isinstance(row.get(f), str) or not row[f].strip()]
        if missing:
            raise ValueError(f"triple {i} (0-based) of {where} lacks non-empty field(s) {missing}")
    return [{f: row[f] for f in TRIPLE_FIELDS} for row in rows]


@dataclass(frozen=True)
class PrefixModeResult:
    """Shared-prefix test under one attention mode: per layer accuracy, ties and mean margin; final-layer cosines."""

    accuracy: list[float]
    ties: list[float]
    margin: list[float]
    sim_positive: list[float]
    sim_negative: list[float]


@dataclass(frozen=True)
class PrefixTestResult:
    triples: int
    pooling: str
    layers: list[int]
    causal: PrefixModeResult
    bidirectional: PrefixModeResult

    def to_dict(self) -> dict:
        return asdict(self)


def _prefix_mask(features: dict[str, Tensor], prefix_lengths: list[int]) -> Tensor:
    """``(B, L)`` bool: real, non-special tokens that lie inside the prefix (their span ends before its end)."""
    offsets = features.pop("offset_mapping")  # (B, L, 2)
    limit = torch.tensor(prefix_lengths).unsqueeze(1)  # (B, 1)
    inside = (offsets[..., 1] <= limit) & (offsets[..., 1] > offsets[..., 0])
    mask = inside & features["attention_mask"].bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"texts {empty}: no token of the prefix left to pool (max_length too small?)")
    return mask


def _pool_prefix(hidden: Tensor, mask: Tensor, pooling: str) -> Tensor:
    """``(B, L, H)`` -> ``(B, H)``: mean over, or last of, the prefix tokens."""
    if pooling == "mean":
        weights = mask.float() / mask.sum(dim=1, keepdim=True)
        return torch.einsum("bl,blh->bh", weights, hidden)
    last = (mask.long() * torch.arange(mask.shape[1])).argmax(dim=1)  # (B,)
    return hidden[torch.arange(hidden.shape[0]), last]


@torch.inference_mode()
def prefix_test(
    model: str | Encoder | PreTrainedModel,
    triples: str | Path | Sequence[Mapping[str, str]] | None = None,
    tokenizer: Any = None,
    pooling: str = "mean",
    batch_size: int = 16,
    max_length: int = 128,
    tolerance: float = 1e-5,
    device: str | torch.device | None = None,
) -> PrefixTestResult:
    """The shared-prefix test under causal and bidirectional attention (module docstring).

    Args:
        triples: list of dicts, a ``.jsonl`` file, or None for the shipped triples.
        pooling: ``mean`` over the prefix tokens or ``last`` prefix token.
        tolerance: ``|cos(q, s+) - cos(q, s-)| <= tolerance`` counts as a tie (not correct).
        device: where the model runs (``None``: where it is; a name loads on the CPU).
    """
    if pooling not in ("mean", "last"):
        raise ValueError(f"unknown prefix pooling {pooling!r} (option `pooling`); choose mean or last")
    rows = load_triples(triples)
    backbone, tokenizer = load_decoder(model, tokenizer, device)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("the prefix test needs a fast tokenizer (character offsets locate the prefix's tokens)")
    texts, prefix_lengths = [], []
    for row in rows:
        for ending in (row["query"], row["positive"], row["negative"]):
            texts.append(f"{row['prefix']} {ending}")
            prefix_lengths.append(len(row["prefix"]))
    modes = {}
    for mode in ("causal", "bidirectional"):
        pooled: list[Tensor] = []  # per batch: (layers + 1, B, H)
        for start in range(0, len(texts), batch_size):
            features = _tokenize(tokenizer, texts[start : start + batch_size], max_length, offsets=True)
            mask = _prefix_mask(features, prefix_lengths[start : start + batch_size])
            with attention(backbone, bidirectional=mode == "bidirectional"):
                hidden = _hidden_states(backbone, features)
            pooled.append(torch.stack([_pool_prefix(h, mask, pooling) for h in hidden]))
        reps = torch.cat(pooled, dim=1).double()  # (layers + 1, 3T, H)
        q, pos, neg = reps[:, 0::3], reps[:, 1::3], reps[:, 2::3]  # (layers + 1, T, H)
        sim_pos = F.cosine_similarity(q, pos, dim=-1)  # (layers + 1, T)
        sim_neg = F.cosine_similarity(q, neg, dim=-1)  # (layers + 1, T)
        diff = sim_pos - sim_neg
        modes[mode] = PrefixModeResult(
            accuracy=(diff > tolerance).double().mean(1).tolist(),
            ties=(diff.abs() <= tolerance).double().mean(1).tolist(),
            margin=diff.mean(1).tolist(),
            sim_positive=sim_pos[-1].tolist(),
            sim_negative=sim_neg[-1].tolist(),
        )
    n_layers = len(modes["causal"].accuracy)
    return PrefixTestResult(len(rows), pooling, list(range(n_layers)), modes["causal"], modes["bidirectional"])


def format_layer_similarity(result: LayerSimilarity) -> str:
    lines = ["| layer | cos(causal, bidirectional) | std |", "|---:|---:|---:|"]
    rows = zip(result.layers, result.mean, result.std, strict=True)
    lines += [f"| {layer} | {m:.4f} | {s:.4f} |" for layer, m, s in rows]
    return "\n".join(lines)


def format_prefix_test(result: PrefixTestResult) -> str:
    lines = [
        f"shared-prefix test: {result.triples} triples, {result.pooling} pooling of the prefix tokens",
        "| layer | causal acc | causal ties | bidir acc | bidir margin |",
        "|---:|---:|---:|---:|---:|",
    ]
    c, b = result.causal, result.bidirectional
    for i in result.layers:
        lines.append(f"| {i} | {c.accuracy[i]:.2f} | {c.ties[i]:.2f} | {b.accuracy[i]:.2f} | {b.margin[i]:+.4f} |")
    return "\n".join(lines)
