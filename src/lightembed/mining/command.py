"""``lightembed mine-negatives MODEL --input SOURCE --output triplets.jsonl``: hard negatives with provenance.

Embeds the anchors and a candidate pool with any encoder :func:`lightembed.api.load_encoder` accepts (Hub id,
folder, ``packaged:`` name, ``.ckpt``), mines with :func:`lightembed.mining.search.mine_hard_negatives` and writes
one triplet row ``{"anchor", "positive", "negative"}`` per mined negative, best first, with the provenance (model,
k, window, hashes of the input files, counts, similarity statistics) in ``<output>.provenance.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lightembed.data.collators import normalize_text
from lightembed.data.pair_sources import SOURCE_FORMATS
from lightembed.mining.search import Embedder, mine_hard_negatives
from lightembed.provenance import file_sha256, git_commit

log = logging.getLogger(__name__)

PROVENANCE_SUFFIX = ".provenance.json"
"""Appended to the output file's name for the provenance record written beside it."""


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
    """The ``lightembed mine-negatives`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="lightembed mine-negatives",
        description="Mine hard negatives for (anchor, positive) pairs and write a triplet jsonl with provenance.",
    )
    parser.add_argument("model", help="encoder: Hub id, local folder, packaged:<name>, or a Lightning .ckpt")
    parser.add_argument("--input", required=True, help="pairs/triplets/NLI source: local file or Hub id")
    parser.add_argument("--output", required=True, help="triplet jsonl to write (provenance beside it)")
    parser.add_argument("--format", default="pairs", choices=list(SOURCE_FORMATS), help="input format")
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
    parser.add_argument(
        "--min-sim", type=float, default=None, help="skip candidates less similar than this (ST's min_score)"
    )
    parser.add_argument(
        "--max-sim", type=float, default=None, help="skip candidates more similar than this (ST's max_score)"
    )
    parser.add_argument(
        "--margin",
        "--absolute-margin",
        type=float,
        default=None,
        help="skip candidates more similar than sim(anchor, positive) - MARGIN (likely false negatives)",
    )
    parser.add_argument(
        "--relative-margin",
        type=float,
        default=None,
        help="skip candidates more similar than sim(anchor, positive) * (1 - R), e.g. 0.05 (NV-Retriever's 95%%)",
    )
    parser.add_argument("--range-min", type=int, default=0, help="skip the N nearest candidates that pass the filters")
    parser.add_argument("--range-max", type=int, default=None, help="consider only the N nearest candidates")
    parser.add_argument(
        "--sampling", choices=["top", "random"], default="top", help="nearest k, or k at random inside the window"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --sampling random")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu", help="torch device for encoding and search, e.g. cuda")
    parser.add_argument("--pooling", default=None, help="override the model's pooling")
    parser.add_argument("--max-length", type=int, default=None, help="override the model's token limit")
    return parser


def mine_negatives_main(argv: Sequence[str], encoder: Embedder | None = None) -> dict[str, Any]:
    """``lightembed mine-negatives``: mine, write ``--output`` and its provenance; return the provenance.

    ``encoder`` replaces loading ``MODEL`` (tests pass a small fake one; ``MODEL`` is still recorded).
    """
    from lightembed.data import PairSource, load_pairs
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
        relative_margin=ns.relative_margin,
        range_min=ns.range_min,
        range_max=ns.range_max,
        sampling=ns.sampling,
        seed=ns.seed,
        batch_size=ns.batch_size,
        precision=ns.precision,
    )

    triplets = [
        {"anchor": anchor, "positive": positive, "negative": negative}
        for row, (anchor, positive) in enumerate(zip(anchors, positives, strict=True))
        for negative in mined.texts(row)
    ]
    if not triplets:  # an empty file would only fail later, inside fit
        raise ValueError(
            f"--input {ns.input}: no hard negative found for any of its {len(anchors)} (anchor, positive) pair(s) "
            f"among {len(mined.candidates)} candidate text(s); nothing written to {ns.output}. Give more rows, "
            "add candidate texts with --candidates, or widen the window (--max-sim, --margin, --range-max)"
        )
    output = Path(ns.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as handle:
        for triplet in triplets:
            handle.write(json.dumps(triplet) + "\n")
    written = len(triplets)
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
    positive_sims = mined.positive_similarity.tolist()
    above = sum(s >= positive_sims[row] for row, sims in enumerate(mined.similarities) for s in sims)
    provenance = {
        "output": str(output),
        "output_sha256": file_sha256(output),
        "triplets": written,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "lightembed_commit": git_commit(),
        "model": ns.model,
        "pooling": getattr(encoder, "pooling", ns.pooling),
        "max_length": getattr(encoder, "max_length", ns.max_length),
        "precision": ns.precision,
        "k": ns.num_negatives,
        "window": {"min_sim": ns.min_sim, "max_sim": ns.max_sim, "margin": ns.margin},
        "ranks": {
            "range_min": ns.range_min,
            "range_max": ns.range_max,
            "relative_margin": ns.relative_margin,
            "sampling": ns.sampling,
            "seed": ns.seed,
        },
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
            "negatives_at_least_as_similar_as_the_positive": above,  # likely false negatives
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
