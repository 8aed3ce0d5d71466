"""Time to build one epoch of no-duplicate, single-dataset batches: 1,000,000 synthetic pairs at batch size 8192.

Four synthetic datasets (400k, 300k, 200k, 100k pairs) whose anchors repeat (about 70% of the rows share their anchor
text with another row, as in NLI or QA data where one query has several positives), every batch from one
dataset, interleaved proportionally, no text twice in a batch. The text hashes are computed once before (printed,
not part of the epoch time); the epoch time is the slowest of three epochs of
``MultiDatasetBatchSampler.global_batches`` plus the split for one rank (what ``__len__``/``__iter__`` do).

    python benchmarks/samplers.py [--pairs 1000000] [--batch-size 8192]

Writes benchmarks/results/samplers.json: {"pairs", "batch_size", "epoch_build_seconds"}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lightembed.data.samplers import MultiDatasetBatchSampler, row_hashes

RESULTS = Path(__file__).parent / "results" / "samplers.json"
SHARES = (0.4, 0.3, 0.2, 0.1)


def synthetic(pairs: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Datasets of (anchor, positive) texts; anchors drawn with repeats, positives distinct."""
    rng = np.random.default_rng(seed)
    sizes = [int(pairs * s) for s in SHARES]
    sizes[0] += pairs - sum(sizes)
    datasets = []
    for d, n in enumerate(sizes):
        anchor_ids = rng.integers(0, int(n * 0.8), n)  # ~70% of the rows share their anchor with another row
        anchors = [f"dataset {d} query {i} about some topic" for i in anchor_ids.tolist()]
        positives = [f"dataset {d} passage {i} answering it" for i in range(n)]
        datasets.append((anchors, positives))
    return datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    ns = parser.parse_args()

    datasets = synthetic(ns.pairs)
    start = time.perf_counter()
    hashes = [row_hashes([anchors, positives]) for anchors, positives in datasets]
    hash_seconds = time.perf_counter() - start

    start = time.perf_counter()
    sampler = MultiDatasetBatchSampler(
        [len(a) for a, _ in datasets], ns.batch_size, mode="single", hashes=hashes, seed=0, drop_last=True
    )
    init_seconds = time.perf_counter() - start
    shared = sampler.shared_rows

    timings = []
    for epoch in range(ns.epochs):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        batches = len(sampler)  # builds the epoch (cached for __iter__)
        timings.append(time.perf_counter() - start)
    rows = [i for b in sampler for i in b]
    assert len(rows) == len(set(rows))

    print(
        f"pairs: {ns.pairs}  batch size: {ns.batch_size}  datasets: {len(datasets)}  rows sharing a text: {shared:.0%}"
    )
    print(f"hashing the texts (once): {hash_seconds:.2f} s; sampler set-up (once): {init_seconds:.2f} s")
    print(f"epoch build: {', '.join(f'{t:.2f}' for t in timings)} s ({batches} batches, {len(rows)} rows)")
    result = {"pairs": ns.pairs, "batch_size": ns.batch_size, "epoch_build_seconds": round(max(timings), 3)}
    if ns.pairs == 1_000_000 and ns.batch_size == 8192:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
