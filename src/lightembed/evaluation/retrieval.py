"""Retrieval evaluation: queries, a corpus and relevance judgements -> nDCG@k, MRR@k, Recall@k, MAP@k, Precision@k.

The metrics follow sentence-transformers' ``InformationRetrievalEvaluator`` exactly (a test compares every value):

* hits are ranked by score, ties broken by ascending corpus id; only queries with at least one relevant document count;
* ``precision@k`` = relevant in the top k / k; ``recall@k`` = relevant in the top k / all relevant;
* ``accuracy@k`` = share of queries with a relevant document in the top k;
* ``mrr@k`` = 1 / rank of the first relevant document in the top k (0 if none);
* ``ndcg@k`` with binary gains: DCG@k / the DCG@k of a ranking with every relevant document first;
* ``map@k`` = sum over relevant hits in the top k of precision at that rank, divided by ``min(k, #relevant)``.

The search is exact: embeddings are compared by matrix products over chunks of queries and of the corpus, each chunk
keeps its ``torch.topk`` and the chunks are merged, so memory is bounded by ``query_chunk x corpus_chunk`` scores
whatever the corpus size. ``backend="faiss"`` (the optional ``faiss-cpu`` package) uses a flat inner-product index
instead: the same exact search, with faiss's multi-threaded kernels.

Instructions (LLM2Vec / E5 style) go to the queries only and are excluded from pooling, as in
:meth:`lightembed.encoder.Encoder.encode`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightembed.evaluation.encoding import EncodeCache, as_cache

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 100)
"""Cut-offs of every metric by default (those of sentence-transformers' evaluator together)."""

METRICS = ("ndcg", "mrr", "recall", "precision", "map", "accuracy")
Score = Literal["cosine", "dot"]
Backend = Literal["exact", "faiss"]


@dataclass
class RetrievalTask:
    """A retrieval set: ``queries`` and ``corpus`` map ids to texts, ``relevant`` maps a query id to its relevant
    corpus ids (queries without any are not evaluated, as in sentence-transformers)."""

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]
    source: str | None = None

    def evaluated_queries(self) -> list[str]:
        return [q for q in self.queries if self.relevant.get(q)]


@dataclass
class RetrievalResult:
    """Scores of one retrieval set: ``metrics`` maps ``"<metric>@<k>"`` to its value."""

    name: str
    metrics: dict[str, float]
    queries: int
    corpus: int
    source: str | None = None
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.metrics,
            "queries": self.queries,
            "corpus": self.corpus,
            "source": self.source,
            "seconds": round(self.seconds, 3),
        }


def _prepare(embeddings: Tensor | np.ndarray, score: Score) -> Tensor:
    tensor = torch.as_tensor(embeddings).float()
    if score == "cosine":
        return torch.nn.functional.normalize(tensor, dim=-1)
    if score != "dot":
        raise ValueError(f"unknown score {score!r} (option `score`); choose cosine or dot")
    return tensor


def exact_top_k(
    queries: Tensor | np.ndarray,
    corpus: Tensor | np.ndarray,
    k: int,
    *,
    score: Score = "cosine",
    query_chunk: int = 1024,
    corpus_chunk: int = 65536,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` corpus rows per query by cosine or dot product, in bounded memory.

    Args:
        queries: ``(Q, H)`` embeddings.
        corpus: ``(C, H)`` embeddings (float32 rows are used in place: no copy of the corpus is made).
        k: hits per query (at most ``C``).
        score: ``"cosine"`` (scores divided by the norms) or ``"dot"``.
        query_chunk, corpus_chunk: rows per matrix product; memory is ``query_chunk x corpus_chunk`` scores.

    Returns:
        ``values (Q, k)`` float32 scores, best first, and ``indices (Q, k)`` int64 corpus rows.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    query = _prepare(queries, score)
    corpus = torch.as_tensor(corpus)
    n_queries, n_corpus = query.shape[0], corpus.shape[0]
    k = min(k, n_corpus)
    # cosine: scale each score by 1/|document| instead of normalising a copy of every corpus chunk per query chunk
    inverse_norms = None
    if score == "cosine":
        inverse_norms = torch.empty(n_corpus)  # (C,)
        for c0 in range(0, n_corpus, corpus_chunk):
            norms = corpus[c0 : c0 + corpus_chunk].float().norm(dim=1)  # (c,)
            inverse_norms[c0 : c0 + corpus_chunk] = 1.0 / norms.clamp_min(1e-12)
    values = torch.empty((n_queries, k))  # (Q, k)
    indices = torch.empty((n_queries, k), dtype=torch.int64)  # (Q, k)
    for q0 in range(0, n_queries, query_chunk):
        q = query[q0 : q0 + query_chunk]  # (q, H)
        best_v = torch.empty((q.shape[0], 0))  # (q, 0): grows to (q, k)
        best_i = torch.empty((q.shape[0], 0), dtype=torch.int64)
        for c0 in range(0, n_corpus, corpus_chunk):
            sims = q @ corpus[c0 : c0 + corpus_chunk].float().T  # (q, c)
            if inverse_norms is not None:
                sims *= inverse_norms[c0 : c0 + corpus_chunk]  # (q, c) cosine
            top_v, top_i = sims.topk(min(k, sims.shape[1]), dim=1)  # (q, k')
            merged_v = torch.cat([best_v, top_v], dim=1)  # (q, k + k')
            merged_i = torch.cat([best_i, top_i + c0], dim=1)  # (q, k + k')
            best_v, pick = merged_v.topk(min(k, merged_v.shape[1]), dim=1)  # (q, k)
            best_i = merged_i.gather(1, pick)  # (q, k)
        values[q0 : q0 + q.shape[0]], indices[q0 : q0 + q.shape[0]] = best_v, best_i
    return values, indices


def faiss_top_k(
    queries: Tensor | np.ndarray, corpus: Tensor | np.ndarray, k: int, *, score: Score = "cosine"
) -> tuple[Tensor, Tensor]:
    """:func:`exact_top_k` with a flat (exact) faiss inner-product index; needs the ``faiss`` extra."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError("backend 'faiss' needs the faiss-cpu package: pip install 'lightembed[faiss]'") from err
    query = _prepare(queries, score).numpy()
    keys = _prepare(corpus, score).numpy()
    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(np.ascontiguousarray(keys))
    values, indices = index.search(np.ascontiguousarray(query), min(k, keys.shape[0]))
    return torch.from_numpy(values), torch.from_numpy(indices.astype(np.int64))


def search(
    queries: Tensor | np.ndarray,
    corpus: Tensor | np.ndarray,
    k: int,
    *,
    score: Score = "cosine",
    backend: Backend = "exact",
    corpus_chunk: int = 65536,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` search with the chosen backend (``exact`` torch chunks or ``faiss``)."""
    if backend == "faiss":
        return faiss_top_k(queries, corpus, k, score=score)
    if backend != "exact":
        raise ValueError(f"unknown search backend {backend!r} (option `backend`); choose exact or faiss")
    return exact_top_k(queries, corpus, k, score=score, corpus_chunk=corpus_chunk)


def _dcg(relevances: Sequence[int], k: int) -> float:
    return sum(relevances[i] / np.log2(i + 2) for i in range(min(len(relevances), k)))


def ranking_metrics(
    rankings: Sequence[Sequence[str]], relevant: Sequence[set[str]], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Mean metrics (module docstring) of ranked corpus-id lists against each query's relevant ids."""
    if not rankings:
        raise ValueError("no query with a relevant document: nothing to evaluate")
    sums = {f"{m}@{k}": 0.0 for m in METRICS for k in ks}
    for ranked, rel in zip(rankings, relevant, strict=True):
        hits = [1 if doc in rel else 0 for doc in ranked]
        for k in ks:
            top = hits[:k]
            correct = sum(top)
            sums[f"precision@{k}"] += correct / k
            sums[f"recall@{k}"] += correct / len(rel)
            sums[f"accuracy@{k}"] += 1.0 if correct else 0.0
            first = next((rank for rank, hit in enumerate(top) if hit), None)
            sums[f"mrr@{k}"] += 0.0 if first is None else 1.0 / (first + 1)
            sums[f"ndcg@{k}"] += _dcg(top, k) / _dcg([1] * len(rel), k)
            found, precisions = 0, 0.0
            for rank, hit in enumerate(top):
                if hit:
                    found += 1
                    precisions += found / (rank + 1)
            sums[f"map@{k}"] += precisions / min(k, len(rel))
    return {name: value / len(rankings) for name, value in sums.items()}


def _embed(cache: EncodeCache, texts: list[str], instruction: str | None) -> np.ndarray:
    if instruction is None or instruction == cache.instruction:
        return cache.encode(texts)
    own = EncodeCache(cache.encoder, batch_size=cache.batch_size, precision=cache.precision, instruction=instruction)
    out = own.encode(texts)
    cache.encoded += own.encoded
    cache.seconds += own.seconds
    return out


def evaluate_retrieval_embeddings(
    task: RetrievalTask,
    query_embeddings: Tensor | np.ndarray,
    corpus_embeddings: Tensor | np.ndarray,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    score: Score = "cosine",
    backend: Backend = "exact",
    corpus_chunk: int = 65536,
) -> dict[str, float]:
    """Metrics of ``task`` from embeddings of its evaluated queries (``task.evaluated_queries()`` order) and of its
    corpus (``task.corpus`` order)."""
    query_ids, corpus_ids = task.evaluated_queries(), list(task.corpus)
    if len(query_ids) != len(query_embeddings) or len(corpus_ids) != len(corpus_embeddings):
        raise ValueError(
            f"{task.name}: got {len(query_embeddings)} query and {len(corpus_embeddings)} corpus embeddings for "
            f"{len(query_ids)} queries and {len(corpus_ids)} documents"
        )
    values, indices = search(
        query_embeddings, corpus_embeddings, max(ks), score=score, backend=backend, corpus_chunk=corpus_chunk
    )
    rankings = []
    for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True):
        hits = sorted(((-v, corpus_ids[i]) for v, i in zip(row_v, row_i, strict=True)))  # ties: ascending id
        rankings.append([doc for _, doc in hits])
    return ranking_metrics(rankings, [task.relevant[q] for q in query_ids], ks)


def evaluate_retrieval(
    encoder: Any,
    tasks: Sequence[RetrievalTask],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    score: Score = "cosine",
    backend: Backend = "exact",
    query_instruction: str | None = None,
    corpus_instruction: str | None = None,
    batch_size: int = 64,
    precision: str = "float32",
    corpus_chunk: int = 65536,
) -> list[RetrievalResult]:
    """Embed each task's queries (with ``query_instruction``) and corpus, search, and score (module docstring).

    ``encoder`` is a lightembed Encoder or stage, any object with ``encode(texts)``, or an :class:`EncodeCache`.
    """
    bad = [k for k in ks if int(k) != k or k < 1]
    if not ks or bad:
        raise ValueError(f"retrieval cut-offs must be positive integers, got {list(ks)}")
    cache = as_cache(encoder, batch_size=batch_size, precision=precision)
    results = []
    for task in tasks:
        start = time.perf_counter()
        query_ids = task.evaluated_queries()
        if not query_ids:
            raise ValueError(f"retrieval set {task.name!r} ({task.source}): no query has a relevant document")
        queries = _embed(cache, [task.queries[q] for q in query_ids], query_instruction)
        corpus = _embed(cache, list(task.corpus.values()), corpus_instruction)
        metrics = evaluate_retrieval_embeddings(
            task, queries, corpus, ks=ks, score=score, backend=backend, corpus_chunk=corpus_chunk
        )
        results.append(
            RetrievalResult(
                name=task.name,
                metrics=metrics,
                queries=len(query_ids),
                corpus=len(task.corpus),
                source=task.source,
                seconds=time.perf_counter() - start,
                settings={"ks": list(ks), "score": score, "backend": backend, "query_instruction": query_instruction},
            )
        )
    return results


def format_retrieval_table(results: Sequence[RetrievalResult], columns: Sequence[str] | None = None) -> str:
    """Markdown table (x100) of the headline metrics: nDCG@10, MRR@10, Recall@10/100, MAP@100 where computed."""
    if not results:
        return ""
    wanted = columns or ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100")
    shown = [c for c in wanted if all(c in r.metrics for r in results)]
    if not shown:
        shown = list(results[0].metrics)[:5]
    lines = ["| set | queries | corpus | " + " | ".join(shown) + " |", "|---|---:|---:|" + "---:|" * len(shown)]
    for r in results:
        cells = " | ".join(f"{100 * r.metrics[c]:.2f}" if math.isfinite(r.metrics[c]) else "-" for c in shown)
        lines.append(f"| {r.name} | {r.queries} | {r.corpus} | {cells} |")
    return "\n".join(lines)
