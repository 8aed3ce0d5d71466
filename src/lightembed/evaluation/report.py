"""Evaluation suites and their report: every score with the model, settings, data hashes and environment beside it.

:func:`run_suite` runs the STS, classification, clustering, retrieval and reranking evaluators with one shared
:class:`~lightembed.evaluation.encoding.EncodeCache` (each distinct text is encoded once per run);
:func:`build_report` turns the results into a JSON-ready dict and :func:`format_report` into markdown.

Report schema (``lightembed evaluate --json``)::

    model, pooling, dtype (weights), precision (encoding), max_length, normalize, instruction, seed,
    git_commit, packages {name: version}, env {python, platform, machine, torch_threads},
    settings {classifiers, folds, c_grid, max_train, ...},
    data {"<task>/<set>": {source, kind, files: [{path, bytes, sha256}] | id/config/split}},
    sts {set: {spearman, pearson, pairs, source}},
    classification {set: {classifier: {accuracy, f1, accuracy_std, protocol, n_train, n_test, classes, c}}},
    clustering {set: {v_measure, ari, n, clusters, classes}},
    retrieval {set: {"ndcg@k", "mrr@k", "recall@k", "precision@k", "map@k", "accuracy@k", queries, corpus, source}},
    reranking {set: {map, "mrr@k", "ndcg@k", samples, source}},
    mteb {task: main score},
    encode {texts, seconds, per_s},
    scores [{task, set, metric, value, classifier?, model, pooling, dtype, precision, seed, git_commit,
             data_sha256}]   # one flat row per score, its provenance beside it

Suites (``--suite``): ``sts`` (STS-B test), ``sts-all`` (STS12-16, STS-B, SICK-R), ``senteval`` (alias
``classification``: MR, CR, SUBJ, MPQA, SST-2, TREC, MRPC), ``clustering`` (TREC questions, KMeans v-measure).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lightembed.data.sources import source_fingerprint
from lightembed.evaluation.classification import (
    SENTEVAL_SETS,
    ClassificationResult,
    evaluate_classification,
    format_classification_table,
)
from lightembed.evaluation.clustering import (
    CLUSTERING_SETS,
    ClusteringResult,
    evaluate_clustering,
    format_clustering_table,
)
from lightembed.evaluation.encoding import EncodeCache
from lightembed.evaluation.reranking import RerankingResult, evaluate_reranking, format_reranking_table
from lightembed.evaluation.retrieval import DEFAULT_KS, RetrievalResult, evaluate_retrieval, format_retrieval_table
from lightembed.evaluation.retrieval_data import load_reranking, load_retrieval
from lightembed.evaluation.sts import STSResult, evaluate_sts, format_table, sts_all_sources
from lightembed.provenance import environment

SUITES = ("sts", "sts-all", "senteval", "classification", "clustering")
"""Names accepted by ``--suite``."""


def suite_sources(suites: Sequence[str], data_root: str | None = None) -> dict[str, dict[str, str]]:
    """The named sources each suite stands for: ``{"sts": {...}, "classification": {...}, "clustering": {...}}``."""
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown} (option --suite); choose from {list(SUITES)}")
    out: dict[str, dict[str, str]] = {"sts": {}, "classification": {}, "clustering": {}}
    for suite in suites:
        if suite == "sts":
            out["sts"]["stsb_test"] = sts_all_sources(data_root)["stsb"]
        elif suite == "sts-all":
            out["sts"].update(sts_all_sources(data_root))
        elif suite in ("senteval", "classification"):
            out["classification"].update(SENTEVAL_SETS)
        elif suite == "clustering":
            out["clustering"].update(CLUSTERING_SETS)
    return out


@dataclass
class SuiteResults:
    """What :func:`run_suite` measured, plus the sources and settings it used."""

    sts: list[STSResult] = field(default_factory=list)
    classification: list[ClassificationResult] = field(default_factory=list)
    clustering: list[ClusteringResult] = field(default_factory=list)
    retrieval: list[RetrievalResult] = field(default_factory=list)
    reranking: list[RerankingResult] = field(default_factory=list)
    mteb: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, dict[str, str]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    encoded: int = 0
    encode_seconds: float = 0.0


def run_suite(
    encoder: Any,
    sts: dict[str, str] | None = None,
    classification: dict[str, str] | None = None,
    clustering: dict[str, str] | None = None,
    retrieval: dict[str, str] | None = None,
    reranking: dict[str, str] | None = None,
    *,
    classifiers: Sequence[str] = ("logreg",),
    sts_split: str = "test",
    clustering_split: str = "test",
    data_root: str | None = None,
    folds: int = 10,
    seed: int = 0,
    c_grid: Sequence[float] | None = None,
    max_train: int | None = None,
    n_clusters: int | None = None,
    batch_size: int = 64,
    precision: str = "float32",
    instruction: str | None = None,
    retrieval_split: str = "test",
    retrieval_ks: Sequence[int] = DEFAULT_KS,
    query_instruction: str | None = None,
    search_backend: str = "exact",
    cache: EncodeCache | None = None,
) -> SuiteResults:
    """Run the STS, classification, clustering, retrieval and reranking evaluators on one encoder with a shared
    embedding cache.

    ``encoder`` is a lightembed module or any object with ``encode(texts)``; each ``dict`` maps set names to sources
    (None or empty: skip that evaluator). Options are those of the evaluators; ``query_instruction`` goes to the
    queries of retrieval and reranking sets only.
    """
    cache = cache or EncodeCache(encoder, batch_size=batch_size, precision=precision, instruction=instruction)
    before_n, before_s = cache.encoded, cache.seconds
    results = SuiteResults(
        sources={
            "sts": dict(sts or {}),
            "classification": dict(classification or {}),
            "clustering": dict(clustering or {}),
            "retrieval": dict(retrieval or {}),
            "reranking": dict(reranking or {}),
        },
        settings={
            "classifiers": list(classifiers),
            "folds": folds,
            "seed": seed,
            "c_grid": list(c_grid) if c_grid else None,
            "max_train": max_train,
            "n_clusters": n_clusters,
            "sts_split": sts_split,
            "clustering_split": clustering_split,
            "batch_size": batch_size,
            "precision": precision,
            "instruction": instruction,
            "data_root": data_root,
            **(
                {
                    "retrieval_split": retrieval_split,
                    "retrieval_ks": list(retrieval_ks),
                    "query_instruction": query_instruction,
                    "search_backend": search_backend,
                }
                if retrieval or reranking
                else {}
            ),
        },
    )
    if sts:
        results.sts = evaluate_sts(cache, sts, split=sts_split, data_root=data_root)
    if classification:
        results.classification = evaluate_classification(
            cache,
            classification,
            classifiers=classifiers,
            data_root=data_root,
            folds=folds,
            seed=seed,
            c_grid=c_grid,
            max_train=max_train,
        )
    if clustering:
        results.clustering = evaluate_clustering(
            cache, clustering, split=clustering_split, data_root=data_root, n_clusters=n_clusters, seed=seed
        )
    if retrieval:
        tasks = [load_retrieval(name, source, retrieval_split, data_root) for name, source in retrieval.items()]
        results.retrieval = evaluate_retrieval(
            cache,
            tasks,
            ks=retrieval_ks,
            backend=search_backend,
            query_instruction=query_instruction,  # type: ignore[arg-type]
        )
    if reranking:
        sets = {name: load_reranking(source, retrieval_split, data_root) for name, source in reranking.items()}
        results.reranking = evaluate_reranking(
            cache,
            sets,
            query_instruction=query_instruction,
            batch_size=batch_size,
            precision=precision,
            sources=reranking,
        )
    results.encoded = cache.encoded - before_n
    results.encode_seconds = cache.seconds - before_s
    return results


def _fingerprint(source: str, splits: Sequence[str], data_root: str | None) -> dict[str, Any]:
    """Files (with sha256) a source reads over the given splits, or its Hub id."""
    merged: dict[str, Any] | None = None
    for split in splits:
        try:
            fp = source_fingerprint(source, split, data_root)
        except FileNotFoundError:
            continue
        if merged is None:
            merged = fp
        elif fp["kind"] == "local":
            known = {f["path"] for f in merged["files"]}
            merged["files"] += [f for f in fp["files"] if f["path"] not in known]
    return merged or {"source": source, "kind": "unknown"}


def data_fingerprints(results: SuiteResults, data_root: str | None = None) -> dict[str, dict[str, Any]]:
    """``{"<task>/<set>": fingerprint}`` for every source the suite read."""
    sts_split = results.settings.get("sts_split", "test")
    clustering_split = results.settings.get("clustering_split", "test")
    out = {}
    for name, source in results.sources.get("sts", {}).items():
        out[f"sts/{name}"] = _fingerprint(source, [sts_split], data_root)
    for name, source in results.sources.get("classification", {}).items():
        out[f"classification/{name}"] = _fingerprint(source, ["train", "validation", "test"], data_root)
    for name, source in results.sources.get("clustering", {}).items():
        out[f"clustering/{name}"] = _fingerprint(source, [clustering_split], data_root)
    retrieval_split = results.settings.get("retrieval_split", "test")
    for task in ("retrieval", "reranking"):
        for name, source in results.sources.get(task, {}).items():
            out[f"{task}/{name}"] = _fingerprint(source, [retrieval_split], data_root)
    return out


def _hashes(fingerprint: dict[str, Any]) -> list[str] | str | None:
    if fingerprint.get("kind") == "local":
        return [f["sha256"] for f in fingerprint["files"]]
    if fingerprint.get("kind") == "hub":
        config = f":{fingerprint['config']}" if fingerprint.get("config") else ""
        return f"hub:{fingerprint['id']}{config}@{fingerprint['split']}"
    return None


def build_report(
    results: SuiteResults,
    model: str,
    encoder: Any = None,
    data_root: str | None = None,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-ready report (schema in the module docstring)."""
    env = env or environment()
    hparams = getattr(encoder, "hparams", {}) or {}  # a training stage
    encoder_settings = getattr(encoder, "settings", None)  # an Encoder
    settings = results.settings
    head = {
        "model": model,
        "pooling": getattr(encoder, "pooling", None),
        "dtype": getattr(encoder_settings, "dtype", None) or hparams.get("dtype"),
        "precision": settings.get("precision"),
        "max_length": getattr(encoder, "max_length", None),
        "normalize": getattr(encoder, "normalize", None),
        "instruction": settings.get("instruction"),
        "seed": settings.get("seed"),
        "git_commit": env.get("git_commit"),
    }
    data = data_fingerprints(results, data_root)
    provenance = {k: head[k] for k in ("model", "pooling", "dtype", "precision", "seed", "git_commit")}
    scores: list[dict[str, Any]] = []

    def row(task: str, name: str, metric: str, value: float, **extra: Any) -> None:
        scores.append(
            {
                "task": task,
                "set": name,
                "metric": metric,
                "value": value,
                **extra,
                **provenance,
                "data_sha256": _hashes(data.get(f"{task}/{name}", {})),
            }
        )

    sts = {}
    for r in results.sts:
        sts[r.name] = r.to_dict()
        row("sts", r.name, "spearman", r.spearman)
        row("sts", r.name, "pearson", r.pearson)
    classification: dict[str, dict[str, Any]] = {}
    for r in results.classification:
        entry = r.to_dict()
        classification.setdefault(r.name, {})[r.classifier] = entry
        row("classification", r.name, "accuracy", r.accuracy, classifier=r.classifier)
    clustering = {}
    for r in results.clustering:
        clustering[r.name] = r.to_dict()
        row("clustering", r.name, "v_measure", r.v_measure)
    retrieval = {}
    for r in results.retrieval:
        retrieval[r.name] = r.to_dict()
        for metric, value in r.metrics.items():
            row("retrieval", r.name, metric, value)
    reranking = {}
    for r in results.reranking:
        reranking[r.name] = r.to_dict()
        for metric in ("map", f"mrr@{r.at_k}", f"ndcg@{r.at_k}"):
            row("reranking", r.name, metric, reranking[r.name][metric])
    for task, value in results.mteb.items():
        scores.append({"task": "mteb", "set": task, "metric": "main_score", "value": value, **provenance})
    per_s = results.encoded / results.encode_seconds if results.encode_seconds > 0 else None
    return {
        **head,
        "packages": env.get("packages"),
        "env": {k: v for k, v in env.items() if k not in ("packages", "git_commit")},
        "settings": settings,
        "data": data,
        "sts": sts,
        "classification": classification,
        "clustering": clustering,
        "retrieval": retrieval,
        "reranking": reranking,
        "mteb": dict(results.mteb),
        "encode": {"texts": results.encoded, "seconds": round(results.encode_seconds, 3), "per_s": per_s},
        "scores": scores,
    }


def format_report(results: SuiteResults, header: str | None = None) -> str:
    """Markdown tables (STS, classification, clustering, retrieval, reranking, MTEB) for stdout."""
    parts = [header] if header else []
    if results.sts:
        parts += ["### STS (cosine, x100)", format_table(results.sts)]
    if results.classification:
        parts += ["### Classification (accuracy, x100)", format_classification_table(results.classification)]
    if results.clustering:
        parts += ["### Clustering (KMeans, x100)", format_clustering_table(results.clustering)]
    if results.retrieval:
        parts += ["### Retrieval (x100)", format_retrieval_table(results.retrieval)]
    if results.reranking:
        parts += ["### Reranking (x100)", format_reranking_table(results.reranking)]
    if results.mteb:
        lines = ["| task | main score |", "|---|---:|"]
        lines += [f"| {task} | {value} |" for task, value in results.mteb.items()]
        parts += ["### MTEB", "\n".join(lines)]
    return "\n\n".join(parts)
