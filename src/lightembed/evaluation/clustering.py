"""Clustering evaluation: KMeans on sentence embeddings, scored by v-measure against the gold labels (x100).

A set is a source with ``text, label`` columns (any number of classes); KMeans gets as many clusters as the set has
labels unless told otherwise, ``n_init`` restarts and a fixed seed. V-measure (Rosenberg & Hirschberg 2007) is the
harmonic mean of homogeneity and completeness and does not depend on how clusters are numbered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, v_measure_score

from lightembed.data.sources import load_source, resolve_source
from lightembed.encoder import TextEncoder
from lightembed.evaluation.encoding import Embedder, EncodeCache, as_cache

CLUSTERING_SETS: dict[str, str] = {"trec": "classification/trec/train.jsonl"}
"""Default labelled sets for the ``clustering`` suite (paths under the data root): TREC's 6 question types."""


@dataclass(frozen=True)
class ClusteringResult:
    """One set: v-measure (and adjusted Rand index) x100 of KMeans clusters against the labels."""

    name: str
    source: str
    v_measure: float
    ari: float
    n: int
    clusters: int
    classes: int

    def to_dict(self) -> dict:
        return asdict(self)


def cluster_score(
    embeddings: np.ndarray, labels: np.ndarray, n_clusters: int | None = None, seed: int = 0, n_init: int = 10
) -> tuple[float, float, np.ndarray]:
    """KMeans on ``(N, H)`` embeddings -> ``(v-measure x100, ARI x100, cluster ids)``."""
    k = n_clusters or len(np.unique(labels))
    if k < 2 or k > len(labels):
        raise ValueError(f"KMeans needs 2 <= n_clusters <= number of texts ({len(labels)}), got {k}")
    assigned = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(embeddings)
    return v_measure_score(labels, assigned) * 100, adjusted_rand_score(labels, assigned) * 100, assigned


def evaluate_clustering(
    encoder: TextEncoder | Embedder | EncodeCache,
    sources: dict[str, str],
    split: str = "test",
    data_root: str | None = None,
    n_clusters: int | None = None,
    seed: int = 0,
    n_init: int = 10,
    batch_size: int = 64,
    precision: str = "float32",
    instruction: str | None = None,
) -> list[ClusteringResult]:
    """KMeans + v-measure of ``encoder`` on named ``text, label`` sources.

    Args:
        encoder: a lightembed module, any object with ``encode(texts)``, or a shared :class:`EncodeCache`.
        sources: name -> source (local file/folder under ``data_root`` or Hub id).
        split: split read from Hub ids and per-split folders.
        n_clusters: clusters per set; None uses the number of distinct labels of each set.
        seed, n_init: KMeans seed and restarts.
    """
    cache = as_cache(encoder, batch_size=batch_size, precision=precision, instruction=instruction)
    results = []
    for name, source in sources.items():
        where = f"{name!r} ({resolve_source(source, split, data_root).describe()})"
        try:
            ds = load_source(source, ("text", "label"), split=split, data_root=data_root)
        except ValueError as err:
            raise ValueError(f"clustering set {where}: {err}") from err
        raw = list(ds["label"])
        if any(label is None for label in raw):
            row = next(i for i, label in enumerate(raw) if label is None)
            raise ValueError(f"clustering set {where}: row {row} (0-based) has no label")
        classes = sorted(set(raw), key=str)
        if len(classes) < 2:
            raise ValueError(f"clustering set {where} has a single class ({classes[0]!r}): v-measure is meaningless")
        index = {label: i for i, label in enumerate(classes)}
        labels = np.array([index[label] for label in raw])
        embeddings = cache.encode(list(ds["text"]))
        v, ari, assigned = cluster_score(embeddings, labels, n_clusters, seed, n_init)
        results.append(ClusteringResult(name, source, v, ari, len(labels), len(np.unique(assigned)), len(classes)))
    return results


def format_clustering_table(results: list[ClusteringResult]) -> str:
    lines = ["| set | texts | classes | v-measure | ARI |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.name} | {r.n} | {r.classes} | {r.v_measure:.2f} | {r.ari:.2f} |" for r in results]
    return "\n".join(lines)
