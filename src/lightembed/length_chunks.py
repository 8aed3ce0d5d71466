"""Embed a training step's texts in length-sorted chunks, each padded only to its own longest text.

A random batch pads every text to the batch's longest, so on short-sentence data a large share of the tokens a
forward pass computes are padding. Length-grouped batches remove most of it but change which texts share a batch,
which a contrastive loss sees (the ranking within a batch no longer mixes sources). Chunking keeps the batch and
removes padding inside it: the texts of every field (anchor, positive, negative) are sorted by length and embedded
in a few chunks, each cut to its own longest text; the embeddings are put back in order and the loss sees exactly
the batch it would have seen. With right padding a text's embedding does not depend on how far it is padded, so the
embeddings equal the per-field ones up to float rounding; only dropout draws other masks (the rows meet the random
stream in another order).

Where to cut is a small optimisation (:func:`plan_chunks`): a chunk costs its padded tokens ``rows × longest`` plus a
fixed ``overhead`` (in tokens) for one more forward call, whose smaller matrix products run less efficiently. The
overhead is a property of the hardware (a GPU wants a larger value than a CPU); the measured speed-ups are in
``benchmarks/results/stsb_angle.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Features = Mapping[str, Tensor]


def plan_chunks(lengths: Sequence[int], overhead: float) -> list[int]:
    """Chunk sizes for texts sorted longest first that minimise ``Σ_chunks (rows × first length + overhead)``.

    Only cuts at the first text of a run of equal lengths are tried: moving a cut back to the start of its run moves
    texts of that length from a chunk whose longest is at least as long into one whose longest is theirs, which never
    costs more. The dynamic programme is then over the distinct lengths (at most ``max_length`` of them).

    Args:
        lengths: token count of each text, non-increasing.
        overhead: cost of one more chunk, in tokens (>= 0).

    Returns:
        The chunk sizes, in order; they sum to ``len(lengths)`` (empty for no texts).
    """
    if overhead < 0:
        raise ValueError(f"the chunk overhead must be >= 0 tokens, got {overhead}")
    if any(later > earlier for earlier, later in zip(lengths, lengths[1:], strict=False)):
        raise ValueError("plan_chunks needs the lengths sorted longest first")
    n = len(lengths)
    starts = [i for i in range(n) if i == 0 or lengths[i] != lengths[i - 1]] + [n]  # run starts, then the end
    runs = len(starts) - 1
    best = [0.0] + [math.inf] * runs  # best[g]: least cost of the texts before starts[g]
    begin = [0] * (runs + 1)  # the run where the last chunk of that best plan begins
    for g in range(1, runs + 1):
        for h in range(g):  # a chunk from starts[h] to starts[g]
            cost = best[h] + (starts[g] - starts[h]) * lengths[starts[h]] + overhead
            if cost < best[g]:
                best[g], begin[g] = cost, h
    sizes = []
    g = runs
    while g:
        sizes.append(starts[g] - starts[begin[g]])
        g = begin[g]
    return sizes[::-1]


def cut_rows(features: Features, rows: Tensor | slice) -> dict[str, Tensor]:
    """``rows`` of tokenised features ``{name: (B, L)}``, without the trailing columns that are padding in all of them
    (right padding: the positions of real tokens do not change). Features that are not ``(B, L)`` keep their rows."""
    used = features["attention_mask"][rows].any(dim=0).nonzero()  # (L', 1) columns holding a real token
    length = int(used.max()) + 1 if used.numel() else features["attention_mask"].shape[1]
    return {k: v[rows, :length] if v.dim() == 2 else v[rows] for k, v in features.items()}  # (rows, L')


def right_padded(attention_mask: Tensor) -> bool:
    """True when every row's real tokens come first (``(B, L)`` mask non-increasing along each row)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def embed_by_length(
    embed: Callable[[dict[str, Tensor]], Tensor], fields: Mapping[str, Features], overhead: float
) -> dict[str, Tensor]:
    """``{field: embed(features)}``, computed in length-sorted chunks over the texts of all fields.

    Falls back to one ``embed`` call per field when a field is not right-padded (cutting left padding would move
    the positions of real tokens) or the fields carry different inputs (other than ``pool_mask``, which a field
    without one gets as its attention mask: it then pools the same tokens).

    Args:
        embed: tokenised features ``{name: (B, L)}`` -> ``(B, H)`` embeddings.
        fields: ``{field: features}``, e.g. anchor, positive, negative (with ``attention_mask``).
        overhead: the cost of one more chunk, in tokens (see :func:`plan_chunks`).

    Returns:
        ``{field: (B_field, H)}``, rows in the input order.
    """
    names = list(fields)
    keys = [set(fields[name]) - {"pool_mask"} for name in names]
    if any(k != keys[0] for k in keys) or not all(right_padded(fields[name]["attention_mask"]) for name in names):
        return {name: embed(dict(fields[name])) for name in names}
    width = max(fields[name]["attention_mask"].shape[1] for name in names)
    with_pool_mask = any("pool_mask" in fields[name] for name in names)

    def column(name: str, key: str) -> Tensor:
        features = fields[name]
        values = features.get(key, features["attention_mask"])  # (B, L): a missing pool_mask pools every real token
        return F.pad(values, (0, width - values.shape[1]))  # (B, width), padded with 0 (masked out)

    inputs = [*keys[0], "pool_mask"] if with_pool_mask else [*keys[0]]
    joined = {key: torch.cat([column(name, key) for name in names]) for key in inputs}  # (N, width) each
    lengths = joined["attention_mask"].sum(dim=1)  # (N,)
    order = torch.argsort(lengths, descending=True, stable=True)  # (N,) longest first
    sizes = plan_chunks(lengths[order].tolist(), overhead)
    pieces = [embed(cut_rows(joined, rows)) for rows in order.split(sizes)]  # (rows, H) each
    embeddings = torch.cat(pieces)[torch.argsort(order)]  # (N, H) back in the input order
    counts = [fields[name]["attention_mask"].shape[0] for name in names]
    return dict(zip(names, embeddings.split(counts), strict=True))
