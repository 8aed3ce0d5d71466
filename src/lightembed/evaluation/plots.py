"""Pictures: PCA of sentence embeddings coloured by class (before/after training), and the LLM2Vec analyses.

Figures are built with matplotlib's object API (no pyplot state, any backend) and saved as PNG; every function
returns the path it wrote. UMAP is not used: PCA is deterministic, needs no extra dependency, and shows the linear
class separation that the SentEval classifiers measure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from lightembed.evaluation.analysis import LayerSimilarity, PrefixTestResult


def pca_2d(embeddings: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H)`` -> ``((N, 2) coordinates, explained variance ratio of the 2 components)``."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"PCA needs an (N, H) array with N >= 2, got shape {embeddings.shape}")
    pca = PCA(n_components=2, random_state=seed)
    return pca.fit_transform(embeddings), pca.explained_variance_ratio_


def separation(embeddings: np.ndarray, labels: Sequence) -> float:
    """Silhouette score (cosine) of the classes in the full embedding space: -1..1, higher = better separated."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("class separation needs at least two classes")
    return float(silhouette_score(np.asarray(embeddings), labels, metric="cosine"))


def plot_class_separation(
    panels: Mapping[str, np.ndarray] | np.ndarray,
    labels: Sequence,
    path: str | Path,
    title: str | None = None,
    label_names: Mapping | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Scatter the 2-D PCA of each panel's embeddings coloured by class and save one PNG with the panels side by side.

    Args:
        panels: ``{"before": (N, H), "after": (N, H)}`` (any titles), or a single ``(N, H)`` array.
        labels: ``N`` class labels (the same rows in every panel).
        path: PNG file to write (folders are created).
        label_names: label -> name for the legend.

    Returns:
        ``{panel title: silhouette score}`` (cosine, in the full space), also printed in the panel titles.
    """
    if not isinstance(panels, Mapping):
        panels = {"embeddings": panels}
    labels = np.asarray(labels)
    classes = sorted(np.unique(labels).tolist(), key=str)
    names = dict(label_names or {})
    fig = Figure(figsize=(5.2 * len(panels), 4.6), dpi=110)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    scores = {}
    colours = [f"C{i % 10}" for i in range(len(classes))]
    for ax, (panel, embeddings) in zip(axes, panels.items(), strict=True):
        embeddings = np.asarray(embeddings)
        if embeddings.shape[0] != len(labels):
            raise ValueError(f"panel {panel!r}: {embeddings.shape[0]} embeddings for {len(labels)} labels")
        coords, ratio = pca_2d(embeddings, seed)
        scores[panel] = separation(embeddings, labels)
        for colour, cls in zip(colours, classes, strict=True):
            chosen = labels == cls
            ax.scatter(coords[chosen, 0], coords[chosen, 1], s=8, alpha=0.6, c=colour, label=str(names.get(cls, cls)))
        ax.set_title(f"{panel}\nsilhouette {scores[panel]:.3f}")
        ax.set_xlabel(f"PC1 ({ratio[0] * 100:.1f}%)")
        ax.set_ylabel(f"PC2 ({ratio[1] * 100:.1f}%)")
    axes[-1].legend(loc="best", fontsize=7, markerscale=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return scores


def plot_layer_similarity(results: Mapping[str, LayerSimilarity] | LayerSimilarity, path: str | Path) -> Path:
    """Line plot of causal-vs-bidirectional cosine per layer (one line per model)."""
    if isinstance(results, LayerSimilarity):
        results = {"model": results}
    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.subplots()
    for name, result in results.items():
        mean, std = np.array(result.mean), np.array(result.std)
        ax.plot(result.layers, mean, marker="o", label=name)
        ax.fill_between(result.layers, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("cos(causal, bidirectional) per token")
    ax.set_title("Causal vs bidirectional hidden states")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_prefix_test(result: PrefixTestResult, path: str | Path) -> Path:
    """Left: accuracy per layer for causal and bidirectional attention; right: final-layer cos(q, s+) vs cos(q, s-)."""
    fig = Figure(figsize=(10, 4), dpi=110)
    left, right = fig.subplots(1, 2)
    for mode, values in (("causal", result.causal), ("bidirectional", result.bidirectional)):
        left.plot(result.layers, values.accuracy, marker="o", label=mode)
        right.scatter(values.sim_negative, values.sim_positive, s=14, label=mode)
    left.set_xlabel("layer (0 = embeddings)")
    left.set_ylabel("accuracy: cos(q, s+) > cos(q, s-)")
    left.set_ylim(-0.05, 1.05)
    left.set_title(f"Shared-prefix test ({result.triples} triples)")
    left.legend()
    sims = result.causal.sim_positive + result.causal.sim_negative
    sims += result.bidirectional.sim_positive + result.bidirectional.sim_negative
    low, high = min(sims), max(sims)
    right.plot([low, high], [low, high], color="grey", linewidth=0.8)
    right.set_xlabel("cos(q, s-)")
    right.set_ylabel("cos(q, s+)")
    right.set_title("last layer, prefix tokens only")
    right.legend()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"pictures are written as PNG: {str(path)!r} should end in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
