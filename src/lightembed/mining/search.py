"""Hard-negative search: for each anchor, the nearest texts of a candidate pool that are not one of its positives.

For each anchor it takes the ``k`` most similar candidates (cosine) that are

- not the anchor's own text and not the text of any of its positives (every row with the same anchor counts),
- inside the similarity window ``[min_sim, max_sim]``, and
- with ``margin`` (absolute), at most ``sim(anchor, positive) - margin``, and with ``relative_margin``, at most
  ``sim(anchor, positive) - |sim(anchor, positive)| * relative_margin`` (for an anchor with several positives, its
  least similar one): a candidate nearly as close as the positive is likely a false negative;
- with ``range_min``/``range_max``, among the anchor's ``range_max`` nearest candidates (its own texts excluded),
  after the filters above, skipping the ``range_min`` nearest that pass them; then the ``k`` nearest (``sampling=
  "top"``) or ``k`` drawn at random (``"random"``) of those left.

These are the options of sentence-transformers' ``mine_hard_negatives`` (``range_min``, ``range_max``,
``max_score``/``min_score`` = ``max_sim``/``min_sim``, ``absolute_margin``, ``relative_margin``, ``num_negatives``,
``sampling_strategy``). Without ``range_max`` the window is the whole pool.

Texts are compared by their normalised form (:func:`~lightembed.data.collators.normalize_text`), so a candidate
equal to the positive up to case and spacing is never a negative, and the pool holds each text once.

The search is exact: normalised embeddings, matrix products over chunks of anchors and chunks of candidates and a
running top-k, so memory stays at ``query_chunk x key_chunk`` similarities whatever the pool size. No approximate
index (faiss, hnswlib) is used: exact top-k over a pool costs less than embedding it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from lightembed.data.collators import normalize_text


class Embedder(Protocol):
    """What mining needs from a model: :meth:`lightembed.encoder.Encoder.encode`'s signature."""

    def encode(
        self, texts: Sequence[str], batch_size: int = ..., normalize: bool | None = ..., precision: str = ...
    ) -> Tensor: ...


@dataclass
class MinedNegatives:
    """The result of :func:`mine_hard_negatives`.

    Attributes:
        candidates: the candidate pool, one text per normalised form, in first-seen order.
        negatives: per input row, indices into ``candidates`` of its negatives, most similar first (at most ``k``;
            fewer, or none, when the window and exclusions leave fewer).
        similarities: per input row, the cosine similarity of each negative to the anchor.
        positive_similarity: ``(rows,)`` cosine similarity of each row's anchor and positive.
    """

    candidates: list[str]
    negatives: list[list[int]]
    similarities: list[list[float]]
    positive_similarity: np.ndarray

    def texts(self, row: int) -> list[str]:
        """The negative texts of input row ``row``."""
        return [self.candidates[i] for i in self.negatives[row]]


def _unique_texts(texts: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """First text of each normalised form, and normalised form -> index."""
    index: dict[str, int] = {}
    unique: list[str] = []
    for text in texts:
        key = normalize_text(text)
        if key not in index:
            index[key] = len(unique)
            unique.append(text)
    return unique, index


def top_k_candidates(
    queries: Tensor,
    keys: Tensor,
    k: int,
    *,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    min_sim: float | None = None,
    max_sim: float | None = None,
    max_per_query: Tensor | None = None,
    query_chunk: int = 1024,
    key_chunk: int = 16384,
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` keys by dot product for each query, in chunks, with exclusions and a similarity window.

    Args:
        queries: ``(Q, H)`` (normalised embeddings, so the dot product is the cosine).
        keys: ``(C, H)``.
        k: neighbours per query.
        exclude: ``(query_rows, key_cols)`` pairs that may never be returned.
        min_sim: keys less similar than this are skipped.
        max_sim: keys more similar than this are skipped.
        max_per_query: ``(Q,)`` per-query upper bound on the similarity (e.g. positive similarity minus a margin).
        query_chunk: queries per matrix product.
        key_chunk: keys per matrix product.

    Returns:
        ``values (Q, k)`` float32 similarities, best first, ``-inf`` where fewer than ``k`` keys qualify;
        ``indices (Q, k)`` int64 key indices, ``-1`` there.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n_queries, n_keys = queries.shape[0], keys.shape[0]
    values = torch.full((n_queries, k), float("-inf"))  # (Q, k)
    indices = torch.full((n_queries, k), -1, dtype=torch.int64)  # (Q, k)
    if n_queries == 0 or n_keys == 0:
        return values, indices
    ex_rows, ex_cols = (np.empty(0, np.int64), np.empty(0, np.int64)) if exclude is None else exclude
    ex_rows, ex_cols = np.asarray(ex_rows, dtype=np.int64), np.asarray(ex_cols, dtype=np.int64)
    order = np.argsort(ex_rows, kind="stable")
    ex_rows, ex_cols = ex_rows[order], ex_cols[order]
    device = keys.device
    for q0 in range(0, n_queries, query_chunk):
        q1 = min(q0 + query_chunk, n_queries)
        query = queries[q0:q1].float()  # (q, H)
        lo, hi = np.searchsorted(ex_rows, [q0, q1])
        rows_here, cols_here = ex_rows[lo:hi] - q0, ex_cols[lo:hi]
        best_v = torch.full((q1 - q0, k), float("-inf"), device=device)  # (q, k)
        best_i = torch.full((q1 - q0, k), -1, dtype=torch.int64, device=device)  # (q, k)
        for c0 in range(0, n_keys, key_chunk):
            c1 = min(c0 + key_chunk, n_keys)
            sims = query @ keys[c0:c1].float().T  # (q, c)
            skip = torch.zeros_like(sims, dtype=torch.bool)  # (q, c)
            if min_sim is not None:
                skip |= sims < min_sim
            if max_sim is not None:
                skip |= sims > max_sim
            if max_per_query is not None:
                skip |= sims > max_per_query[q0:q1].to(device).unsqueeze(1)
            inside = (cols_here >= c0) & (cols_here < c1)
            if inside.any():
                skip[torch.from_numpy(rows_here[inside]), torch.from_numpy(cols_here[inside] - c0)] = True
            sims = sims.masked_fill(skip, float("-inf"))  # (q, c)
            top_v, top_i = sims.topk(min(k, c1 - c0), dim=1)  # (q, k')
            merged_v = torch.cat([best_v, top_v], dim=1)  # (q, k + k')
            merged_i = torch.cat([best_i, top_i + c0], dim=1)  # (q, k + k')
            best_v, pick = merged_v.topk(k, dim=1)  # (q, k)
            best_i = merged_i.gather(1, pick)  # (q, k)
        best_i = best_i.masked_fill(torch.isinf(best_v), -1)
        values[q0:q1], indices[q0:q1] = best_v.cpu(), best_i.cpu()
    return values, indices


def mine_hard_negatives(
    anchors: Sequence[str],
    positives: Sequence[str],
    encoder: Embedder,
    *,
    candidates: Sequence[str] | None = None,
    k: int = 1,
    min_sim: float | None = None,
    max_sim: float | None = None,
    margin: float | None = None,
    relative_margin: float | None = None,
    range_min: int = 0,
    range_max: int | None = None,
    sampling: Literal["top", "random"] = "top",
    seed: int = 0,
    batch_size: int = 64,
    precision: Literal["float32", "bfloat16"] = "float32",
    query_chunk: int = 1024,
    key_chunk: int = 16384,
) -> MinedNegatives:
    """Mine up to ``k`` hard negatives for each ``(anchor, positive)`` row (rules in the module docstring).

    Args:
        anchors: anchor text per row.
        positives: positive text per row (rows may share an anchor: all its positives are excluded).
        encoder: anything with ``encode(texts, batch_size=, normalize=, precision=) -> (N, H)``.
        candidates: the pool negatives are drawn from; default the positives of all rows.
        k: negatives per row.
        min_sim: skip candidates less similar to the anchor than this.
        max_sim: skip candidates more similar to the anchor than this (likely false negatives).
        margin: skip candidates more similar than ``sim(anchor, positive) - margin``.
        relative_margin: skip candidates more similar than ``sim(anchor, positive) * (1 - relative_margin)`` (for a
            positive similarity >= 0; ``|sim|`` scales the margin otherwise).
        range_min: skip this many of the nearest candidates that pass the filters.
        range_max: only the ``range_max`` nearest candidates are considered (None: all).
        sampling: ``"top"`` keeps the nearest ``k`` left, ``"random"`` draws ``k`` of them (``seed``).
        seed: seed of ``sampling="random"``.
        batch_size: texts per encoder batch.
        precision: ``"float32"`` or ``"bfloat16"`` (autocast) for encoding.
        query_chunk: anchors per similarity product.
        key_chunk: candidates per similarity product.
    """
    if len(anchors) != len(positives):
        raise ValueError(f"got {len(anchors)} anchors but {len(positives)} positives")
    if not anchors:
        raise ValueError("nothing to mine: no (anchor, positive) rows")
    if min_sim is not None and max_sim is not None and min_sim > max_sim:
        raise ValueError(f"empty similarity window: min_sim={min_sim} > max_sim={max_sim}")
    if range_min < 0 or (range_max is not None and range_max < range_min + k):
        raise ValueError(
            f"rank window range_min={range_min}, range_max={range_max} leaves fewer than k={k} candidates; "
            "range_max must be at least range_min + k"
        )
    if sampling not in ("top", "random"):
        raise ValueError(f"unknown sampling {sampling!r}; choose top or random")
    pool, pool_index = _unique_texts(list(positives) if candidates is None else candidates)
    if not pool:
        raise ValueError("the candidate pool is empty")
    queries, query_index = _unique_texts(anchors)
    row_query = np.array([query_index[normalize_text(a)] for a in anchors], dtype=np.int64)  # (rows,)

    # (query, candidate) pairs never returned: the anchor's own text and the texts of all its positives
    excluded = set()
    for q, anchor, positive in zip(row_query.tolist(), anchors, positives, strict=True):
        for text in (anchor, positive):
            c = pool_index.get(normalize_text(text))
            if c is not None:
                excluded.add((q, c))
    pairs = np.array(sorted(excluded), dtype=np.int64).reshape(-1, 2)

    # embed each text once: the pool, then the anchors and positives it lacks
    extra, extra_index = _unique_texts([t for t in [*queries, *positives] if normalize_text(t) not in pool_index])
    embeddings = encoder.encode([*pool, *extra], batch_size=batch_size, normalize=True, precision=precision)
    embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)  # (P + E, H)

    def position(text: str) -> int:
        key = normalize_text(text)
        return pool_index[key] if key in pool_index else len(pool) + extra_index[key]

    keys = embeddings[: len(pool)]  # (P, H)
    query_emb = embeddings[[position(q) for q in queries]]  # (U, H)
    positive_emb = embeddings[[position(p) for p in positives]]  # (rows, H)
    positive_sim = (query_emb[torch.from_numpy(row_query)] * positive_emb).sum(dim=1)  # (rows,)

    bound = None
    if margin is not None or relative_margin is not None:
        least = torch.full((len(queries),), float("inf"))  # (U,) least similar positive of each anchor
        least = least.scatter_reduce(0, torch.from_numpy(row_query), positive_sim, reduce="amin")
        bound = torch.full_like(least, float("inf"))  # (U,)
        if margin is not None:
            bound = torch.minimum(bound, least - margin)
        if relative_margin is not None:
            bound = torch.minimum(bound, least - least.abs() * relative_margin)
    # Without a rank window the filters act inside the search (the window is the whole pool); with one, the
    # range_max nearest are found first and the filters then thin them out, as sentence-transformers does.
    windowed = range_max is not None
    depth = range_max if windowed else range_min + (k if sampling == "top" else 10 * k)
    values, indices = top_k_candidates(
        query_emb,
        keys,
        depth,
        exclude=(pairs[:, 0], pairs[:, 1]),
        min_sim=None if windowed else min_sim,
        max_sim=None if windowed else max_sim,
        max_per_query=None if windowed else bound,
        query_chunk=query_chunk,
        key_chunk=key_chunk,
    )
    found = indices >= 0  # (U, depth)
    if windowed:
        if min_sim is not None:
            found &= values >= min_sim
        if max_sim is not None:
            found &= values <= max_sim
        if bound is not None:
            found &= values <= bound.unsqueeze(1)
    rng = np.random.default_rng(seed)
    per_query, per_query_sim = [], []
    for q in range(len(queries)):
        kept = found[q].nonzero().flatten()[range_min:]  # ranks that pass, nearest first
        if sampling == "random" and len(kept) > k:
            kept = kept[np.sort(rng.choice(len(kept), size=k, replace=False))]
        kept = kept[:k]
        per_query.append(indices[q][kept].tolist())
        per_query_sim.append(values[q][kept].tolist())
    return MinedNegatives(
        candidates=pool,
        negatives=[per_query[q] for q in row_query.tolist()],
        similarities=[per_query_sim[q] for q in row_query.tolist()],
        positive_similarity=positive_sim.numpy(),
    )


def random_negatives(
    anchors: Sequence[str],
    positives: Sequence[str],
    candidates: Sequence[str] | None = None,
    k: int = 1,
    seed: int = 0,
) -> list[list[str]]:
    """``k`` random candidates per row that are neither its anchor nor one of its anchor's positives (a baseline
    for mined negatives). The pool is deduplicated by normalised text; default the positives of all rows."""
    pool, _ = _unique_texts(list(positives) if candidates is None else candidates)
    keys = [normalize_text(t) for t in pool]
    own: dict[str, set[str]] = {}
    for anchor, positive in zip(anchors, positives, strict=True):
        a = normalize_text(anchor)
        own.setdefault(a, {a}).add(normalize_text(positive))
    if len(pool) <= k:
        raise ValueError(f"the candidate pool holds {len(pool)} texts, too few for k={k} negatives per row")
    rng = np.random.default_rng(seed)
    chosen = []
    for anchor in anchors:
        skip = own[normalize_text(anchor)]
        picks: list[str] = []
        while len(picks) < k:
            for i in rng.integers(0, len(pool), 2 * k).tolist():
                if keys[i] not in skip and pool[i] not in picks and len(picks) < k:
                    picks.append(pool[i])
        chosen.append(picks)
    return chosen
