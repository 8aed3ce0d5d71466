"""Hard-negative mining: for each anchor, the nearest texts of a candidate pool that are not one of its positives.

``lightembed mine-negatives MODEL --input SOURCE --output triplets.jsonl`` embeds the anchors and a candidate pool
with any encoder :func:`lightembed.api.load_encoder` accepts (Hub id, folder, ``packaged:`` name, ``.ckpt``), takes
for each anchor the ``k`` most similar candidates (cosine) that are

- not the anchor's own text and not the text of any of its positives (every row with the same anchor counts),
- inside the similarity window ``[min_sim, max_sim]``, and
- with ``margin``, at most ``sim(anchor, positive) - margin`` (for an anchor with several positives, its least
  similar one): a candidate nearly as close as the positive is likely a false negative,

and writes one triplet row ``{"anchor", "positive", "negative"}`` per mined negative, best first, with the provenance
(model, k, window, hashes of the input files, counts, similarity statistics) in ``<output>.provenance.json``.

Texts are compared by their normalised form (:func:`~lightembed.data.collators.normalize_text`), so a candidate
equal to the positive up to case and spacing is never a negative, and the pool holds each text once.

The search is exact: normalised embeddings, matrix products over chunks of anchors and chunks of candidates and a
running top-k, so memory stays at ``query_chunk x key_chunk`` similarities whatever the pool size (100k+ texts are
fine). No approximate index (faiss, hnswlib) is used: exact top-k over 100k candidates costs less than embedding
them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from lightembed.data.collators import normalize_text

log = logging.getLogger(__name__)

PROVENANCE_SUFFIX = ".provenance.json"
"""Appended to the output file's name for the provenance record written beside it."""


class Encoder(Protocol):
    """What mining needs from a model: :meth:`lightembed.stages.base.EmbeddingModule.encode`'s signature."""

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
    encoder: Encoder,
    *,
    candidates: Sequence[str] | None = None,
    k: int = 1,
    min_sim: float | None = None,
    max_sim: float | None = None,
    margin: float | None = None,
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
    if margin is not None:
        least = torch.full((len(queries),), float("inf"))  # (U,) least similar positive of each anchor
        least = least.scatter_reduce(0, torch.from_numpy(row_query), positive_sim, reduce="amin")
        bound = least - margin  # (U,)
    values, indices = top_k_candidates(
        query_emb,
        keys,
        k,
        exclude=(pairs[:, 0], pairs[:, 1]),
        min_sim=min_sim,
        max_sim=max_sim,
        max_per_query=bound,
        query_chunk=query_chunk,
        key_chunk=key_chunk,
    )
    found = indices >= 0  # (U, k)
    per_query = [indices[q][found[q]].tolist() for q in range(len(queries))]
    per_query_sim = [values[q][found[q]].tolist() for q in range(len(queries))]
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


# ----------------------------------------------------------------------------------------------- command


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _parse_pairs(values: Sequence[str] | None, option: str, decode: bool) -> dict[str, Any] | None:
    if not values:
        return None
    parsed: dict[str, Any] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"{option} takes NAME=VALUE items, got {item!r}")
        if decode:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # a plain string
        parsed[name] = value
    return parsed


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    if not len(values):
        return None
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(array.mean()), 4),
        "min": round(float(array.min()), 4),
        "max": round(float(array.max()), 4),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightembed mine-negatives",
        description="Mine hard negatives for (anchor, positive) pairs and write a triplet jsonl with provenance.",
    )
    parser.add_argument("model", help="encoder: Hub id, local folder, packaged:<name>, or a Lightning .ckpt")
    parser.add_argument("--input", required=True, help="pairs/triplets/NLI source: local file or Hub id")
    parser.add_argument("--output", required=True, help="triplet jsonl to write (provenance beside it)")
    parser.add_argument(
        "--format", default="pairs", choices=["pairs", "triplets", "nli_triplets", "nli_pairs"], help="input format"
    )
    parser.add_argument("--columns", nargs="+", metavar="SOURCE=FIELD", help="column mapping (default per format)")
    parser.add_argument("--where", nargs="+", metavar="COLUMN=VALUE", help="keep rows with these values (JSON)")
    parser.add_argument("--min-score", type=float, default=None, help="keep rows whose score column is >= this")
    parser.add_argument("--score-column", default="score")
    parser.add_argument("--split", default="train", help="split of a Hub id or per-split directory")
    parser.add_argument("--data-root", default=None, help="folder for relative local paths (else $LIGHTEMBED_DATA)")
    parser.add_argument("--limit", type=int, default=None, help="mine for the first N input rows only")
    parser.add_argument(
        "--pool",
        nargs="+",
        default=["positive", "negative"],
        choices=["anchor", "positive", "negative"],
        help="input fields whose texts form the candidate pool (default: positives and given negatives)",
    )
    parser.add_argument("--candidates", nargs="+", default=[], metavar="SOURCE", help="more candidate texts")
    parser.add_argument("--candidate-columns", default="text", help="comma-separated text columns of --candidates")
    parser.add_argument("-k", "--num-negatives", type=int, default=1, help="negatives per pair (default 1)")
    parser.add_argument("--min-sim", type=float, default=None, help="skip candidates less similar than this")
    parser.add_argument("--max-sim", type=float, default=None, help="skip candidates more similar than this")
    parser.add_argument(
        "--margin", type=float, default=None, help="skip candidates more similar than sim(anchor, positive) - MARGIN"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu", help="torch device for encoding and search, e.g. cuda")
    parser.add_argument("--pooling", default=None, help="override the model's pooling")
    parser.add_argument("--max-length", type=int, default=None, help="override the model's token limit")
    return parser


def mine_negatives_main(argv: Sequence[str], encoder: Encoder | None = None) -> dict[str, Any]:
    """``lightembed mine-negatives``: mine, write ``--output`` and its provenance; return the provenance.

    ``encoder`` replaces loading ``MODEL`` (tests pass a small fake one; ``MODEL`` is still recorded).
    """
    from lightembed.data.multi import PairSource, load_pairs
    from lightembed.data.sources import load_source, source_fingerprint

    ns = build_parser().parse_args(list(argv))
    started = time.perf_counter()
    spec = PairSource(
        source=ns.input,
        format=ns.format,
        columns=_parse_pairs(ns.columns, "--columns", decode=False),
        split=ns.split,
        where=_parse_pairs(ns.where, "--where", decode=True),
        min_score=ns.min_score,
        score_column=ns.score_column,
        limit=ns.limit,
    )
    rows = load_pairs(spec, ns.data_root)
    fields = rows.column_names
    table = {f: rows.with_format("arrow")[f].to_pylist() for f in fields}

    # one row per distinct (anchor, positive): NLI triplets repeat a pair once per contradiction
    seen: set[tuple[str, str]] = set()
    anchors, positives = [], []
    for anchor, positive in zip(table["anchor"], table["positive"], strict=True):
        key = (normalize_text(anchor), normalize_text(positive))
        if key not in seen:
            seen.add(key)
            anchors.append(anchor)
            positives.append(positive)

    pool = [text for f in ns.pool if f in table for text in table[f]]
    columns = [c for c in ns.candidate_columns.split(",") if c]
    for source in ns.candidates:
        extra = load_source(source, columns, ns.split, ns.data_root, text_columns=columns)
        pool.extend(text for c in columns for text in extra.with_format("arrow")[c].to_pylist())

    if encoder is None:
        from lightembed.api import load_encoder

        encoder = load_encoder(ns.model, pooling=ns.pooling, max_length=ns.max_length).to(ns.device)
    mined = mine_hard_negatives(
        anchors,
        positives,
        encoder,
        candidates=pool,
        k=ns.num_negatives,
        min_sim=ns.min_sim,
        max_sim=ns.max_sim,
        margin=ns.margin,
        batch_size=ns.batch_size,
        precision=ns.precision,
    )

    output = Path(ns.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with output.open("w", encoding="utf-8") as handle:
        for row, (anchor, positive) in enumerate(zip(anchors, positives, strict=True)):
            for negative in mined.texts(row):
                handle.write(json.dumps({"anchor": anchor, "positive": positive, "negative": negative}) + "\n")
                written += 1
    without = sum(not n for n in mined.negatives)
    if without:
        log.warning(
            "%d of %d pairs got no negative inside the window; they are not in %s", without, len(anchors), output
        )

    def fingerprint(source: str) -> dict:
        try:
            return source_fingerprint(source, ns.split, ns.data_root)
        except (FileNotFoundError, ValueError) as err:  # pragma: no cover - the source was just read
            return {"source": source, "error": str(err)}

    negative_sims = [s for sims in mined.similarities for s in sims]
    provenance = {
        "output": str(output),
        "output_sha256": _file_sha256(output),
        "triplets": written,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "lightembed_commit": _git_commit(),
        "model": ns.model,
        "pooling": getattr(encoder, "pooling", ns.pooling),
        "max_length": getattr(encoder, "max_length", ns.max_length),
        "precision": ns.precision,
        "k": ns.num_negatives,
        "window": {"min_sim": ns.min_sim, "max_sim": ns.max_sim, "margin": ns.margin},
        "search": "exact cosine top-k (torch, chunked)",
        "input": {
            **fingerprint(ns.input),
            "format": ns.format,
            "columns": spec.mapping,
            "where": spec.where,
            "min_score": spec.min_score,
            "limit": spec.limit,
            "rows": len(rows),
        },
        "candidates": {
            "pool_fields": [f for f in ns.pool if f in table],
            "sources": [{**fingerprint(s), "columns": columns} for s in ns.candidates],
            "texts": len(mined.candidates),
        },
        "pairs": len(anchors),
        "anchors": len({normalize_text(a) for a in anchors}),
        "pairs_without_negative": without,
        "similarity": {
            "positive": _stats(mined.positive_similarity.tolist()),
            "negative": _stats(negative_sims),
        },
        "seconds": round(time.perf_counter() - started, 2),
    }
    provenance_path = output.with_name(output.name + PROVENANCE_SUFFIX)
    provenance_path.write_text(json.dumps(provenance, indent=2) + "\n")
    print(
        f"mined {written} triplets for {len(anchors)} pairs ({without} without a negative) from "
        f"{len(mined.candidates)} candidates with {ns.model}: {output} (provenance: {provenance_path})"
    )
    return provenance
