"""Reranking evaluation: per query a candidate list (positives + negatives) ordered by similarity -> MAP, MRR@k, nDCG@k.

Follows sentence-transformers' ``RerankingEvaluator`` (a test compares every value): samples without a positive or
without a negative are dropped; candidates are ranked by cosine similarity to the query; ``mrr@k`` is 1 / rank of
the first positive within the top ``k`` (0 if none); ``map`` is scikit-learn's ``average_precision_score`` over the
whole list and ``ndcg@k`` its ``ndcg_score`` at ``k``; each is averaged over samples.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, ndcg_score

from lightembed.evaluation.encoding import EncodeCache, as_cache


@dataclass
class RerankingSample:
    """One query with its positive and negative candidate texts."""

    query: str
    positive: list[str]
    negative: list[str]


@dataclass
class RerankingResult:
    """MAP, MRR@k and nDCG@k of one reranking set."""

    name: str
    map: float
    mrr: float
    ndcg: float
    at_k: int
    samples: int
    source: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "map": self.map,
            f"mrr@{self.at_k}": self.mrr,
            f"ndcg@{self.at_k}": self.ndcg,
            "samples": self.samples,
            "source": self.source,
            "seconds": round(self.seconds, 3),
        }


def rerank_scores(
    query_embeddings: np.ndarray | torch.Tensor,
    doc_embeddings: np.ndarray | torch.Tensor,
    samples: Sequence[RerankingSample],
    at_k: int = 10,
) -> dict[str, float]:
    """MAP / MRR@k / nDCG@k from embeddings: one query row per sample, the documents of all samples concatenated
    (each sample's positives then its negatives)."""
    queries = torch.nn.functional.normalize(torch.as_tensor(query_embeddings).float(), dim=-1)  # (S, H)
    docs = torch.nn.functional.normalize(torch.as_tensor(doc_embeddings).float(), dim=-1)  # (D, H)
    ap, mrr, ndcg = [], [], []
    start = 0
    for row, sample in enumerate(samples):
        n_pos, n_neg = len(sample.positive), len(sample.negative)
        scores = docs[start : start + n_pos + n_neg] @ queries[row]  # (n_pos + n_neg,)
        start += n_pos + n_neg
        relevant = [1] * n_pos + [0] * n_neg
        order = torch.argsort(-scores).tolist()
        first = next((rank for rank, i in enumerate(order[:at_k]) if relevant[i]), None)
        mrr.append(0.0 if first is None else 1.0 / (first + 1))
        ndcg.append(ndcg_score([relevant], [scores.tolist()], k=at_k))
        ap.append(average_precision_score(relevant, scores.tolist()))
    return {"map": float(np.mean(ap)), "mrr": float(np.mean(mrr)), "ndcg": float(np.mean(ndcg))}


def evaluate_reranking(
    encoder: Any,
    sets: dict[str, Sequence[RerankingSample]],
    *,
    at_k: int = 10,
    query_instruction: str | None = None,
    batch_size: int = 64,
    precision: str = "float32",
    sources: dict[str, str] | None = None,
) -> list[RerankingResult]:
    """Score each named set of samples (module docstring); queries get ``query_instruction``, documents none."""
    if at_k < 1:
        raise ValueError(f"reranking at_k must be at least 1, got {at_k}")
    cache = as_cache(encoder, batch_size=batch_size, precision=precision)
    query_cache: EncodeCache = cache
    if query_instruction is not None and query_instruction != cache.instruction:
        query_cache = EncodeCache(
            cache.encoder, batch_size=batch_size, precision=precision, instruction=query_instruction
        )
    results = []
    for name, raw in sets.items():
        start = time.perf_counter()
        samples = [s for s in raw if s.positive and s.negative]
        if not samples:
            raise ValueError(f"reranking set {name!r}: no sample has both a positive and a negative")
        queries = query_cache.encode([s.query for s in samples])
        docs = cache.encode([d for s in samples for d in (*s.positive, *s.negative)])
        scores = rerank_scores(queries, docs, samples, at_k=at_k)
        results.append(
            RerankingResult(
                name=name,
                at_k=at_k,
                samples=len(samples),
                source=(sources or {}).get(name),
                seconds=time.perf_counter() - start,
                **scores,
            )
        )
    return results


def format_reranking_table(results: Sequence[RerankingResult]) -> str:
    """Markdown table (x100): MAP, MRR@k, nDCG@k per set."""
    if not results:
        return ""
    k = results[0].at_k
    lines = [f"| set | samples | MAP | MRR@{k} | nDCG@{k} |", "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {r.samples} | {100 * r.map:.2f} | {100 * r.mrr:.2f} | {100 * r.ndcg:.2f} |")
    return "\n".join(lines)
