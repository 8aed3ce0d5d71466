"""Memory and time of exact retrieval search at scale: 10,000 queries against a 1,000,000 x 384 corpus.

Random unit vectors stand in for embeddings (the search does not care what they mean). The corpus is built in place
(one float32 tensor, 1.43 GiB); the search is :func:`lightembed.evaluation.retrieval.exact_top_k` (cosine, top 100,
chunks of 1024 queries x 65,536 documents). A thread samples the process RSS every 20 ms; the number that matters is
the peak during the search minus the RSS just before it (which holds the corpus): the target is under 2 GiB. A
check on 100 queries against a full ``(100, C)`` similarity matrix confirms the hits are exact.

    flock /tmp/lightembed-heavy.lock .venv/bin/python benchmarks/retrieval_scale.py [--corpus 1000000] [--queries 10000]

Writes benchmarks/results/retrieval_scale.json (only with the default sizes).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import threading
import time
from pathlib import Path

import torch

from lightembed.evaluation.retrieval import exact_top_k

RESULTS = Path(__file__).parent / "results" / "retrieval_scale.json"
GIB = 1024**3


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


class PeakRSS(threading.Thread):
    """Samples the resident set size until stopped; ``peak`` is the largest sample."""

    def __init__(self, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.every, self.peak, self._stop_event = every, rss_bytes(), threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.every)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, rss_bytes())
        return self.peak


def unit_rows(n: int, dim: int, generator: torch.Generator, chunk: int = 65536) -> torch.Tensor:
    out = torch.empty(n, dim)  # (n, dim), filled chunk by chunk so no second copy exists
    for start in range(0, n, chunk):
        block = torch.randn(min(chunk, n - start), dim, generator=generator)
        out[start : start + chunk] = torch.nn.functional.normalize(block, dim=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    ns = parser.parse_args()
    torch.set_num_threads(ns.threads)
    generator = torch.Generator().manual_seed(0)
    corpus = unit_rows(ns.corpus, ns.dim, generator)
    queries = unit_rows(ns.queries, ns.dim, generator)
    corpus_bytes = corpus.numel() * corpus.element_size()

    before = rss_bytes()
    sampler = PeakRSS()
    sampler.start()
    start = time.perf_counter()
    values, indices = exact_top_k(queries, corpus, ns.k, score="cosine")
    seconds = time.perf_counter() - start
    peak = sampler.stop()

    check = 100
    full = queries[:check] @ corpus.T  # (100, C): the brute-force reference for a sample of queries
    expected_v, expected_i = full.topk(ns.k, dim=1)
    same_hits = float((indices[:check] == expected_i).float().mean())
    max_score_diff = float((values[:check] - expected_v).abs().max())
    result = {
        "corpus": [ns.corpus, ns.dim],
        "queries": ns.queries,
        "k": ns.k,
        "score": "cosine",
        "search": "exact_top_k (torch, query chunk 1024 x corpus chunk 65536)",
        "seconds": round(seconds, 1),
        "queries_per_second": round(ns.queries / seconds, 1),
        "corpus_gib": round(corpus_bytes / GIB, 3),
        "rss_before_search_gib": round(before / GIB, 3),
        "peak_rss_gib": round(peak / GIB, 3),
        "peak_above_before_search_gib": round((peak - before) / GIB, 3),
        "ru_maxrss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3),
        "exact_check": {"queries": check, "same_hits": same_hits, "max_score_difference": max_score_diff},
        "target": "peak above the corpus embeddings under 2 GiB",
        "env": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "threads": ns.threads,
        },
    }
    print(json.dumps(result, indent=2))
    if (ns.corpus, ns.queries, ns.dim, ns.k) == (1_000_000, 10_000, 384, 100):
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
