"""The ``lightembed evaluate`` and ``lightembed analyze`` commands (registered in :mod:`lightembed.cli`).

``lightembed evaluate MODEL [--suite sts sts-all senteval clustering] [--sts ...] [--classification ...]
[--clustering ...] [--retrieval NAME=SOURCE ...] [--reranking NAME=SOURCE ...] [--mteb TASK ...] [--json PATH]``
prints markdown tables and writes the JSON report of
:mod:`lightembed.evaluation.report`. Without any set or suite it runs ``--suite sts senteval`` (STS-B test and the
7 SentEval sets) on the data root.

``lightembed analyze layers|prefix|pca ...`` runs the LLM2Vec analyses (:mod:`lightembed.evaluation.analysis`) and
the PCA pictures (:mod:`lightembed.evaluation.plots`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_SUITES = ("sts", "senteval")


def _write_json(path: str, obj: Any) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(obj, indent=2) + "\n")


def _check_data_root(data_root: str | None) -> None:
    if data_root is not None and not Path(data_root).expanduser().is_dir():
        raise FileNotFoundError(f"--data-root {data_root!r} is not a folder")


def evaluate_parser() -> argparse.ArgumentParser:
    from lightembed.evaluation.classification import CLASSIFIERS
    from lightembed.evaluation.report import SUITES

    parser = argparse.ArgumentParser(
        prog="lightembed evaluate",
        description="Evaluate any encoder: STS, SentEval classification, clustering, retrieval, reranking, MTEB; "
        "markdown + JSON report.",
    )
    parser.add_argument("model", help="Hub id, local folder, packaged:<name>, or a Lightning .ckpt")
    parser.add_argument(
        "--suite",
        nargs="+",
        choices=SUITES,
        default=None,
        help="named sets: sts (STS-B test), sts-all (STS12-16, STS-B, SICK-R), senteval/classification "
        "(MR CR SUBJ MPQA SST-2 TREC MRPC), clustering (TREC); default sts senteval when no set is given",
    )
    parser.add_argument(
        "--sts",
        nargs="+",
        default=[],
        metavar="[NAME=]SOURCE",
        help="STS sets: local files (relative to --data-root) or Hub ids with sentence1/sentence2/score; "
        "'all' = the 7-task setting",
    )
    parser.add_argument(
        "--classification",
        nargs="+",
        default=[],
        metavar="[NAME=]SOURCE",
        help="classification sets: a SentEval name (mr cr subj mpqa sst2 trec mrpc) or NAME=SOURCE with "
        "text/label (or sentence1/sentence2/label) columns",
    )
    parser.add_argument(
        "--clustering", nargs="+", default=[], metavar="[NAME=]SOURCE", help="labelled text/label sets for KMeans"
    )
    parser.add_argument(
        "--retrieval",
        nargs="+",
        default=[],
        metavar="NAME=SOURCE",
        help="retrieval sets: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or Hub id, or a file "
        "with query/positive[/negative] columns; nDCG, MRR, Recall, MAP, Precision at --retrieval-k",
    )
    parser.add_argument(
        "--reranking",
        nargs="+",
        default=[],
        metavar="NAME=SOURCE",
        help="reranking sets: query/positive/negative rows (text or lists); MAP and MRR@10",
    )
    parser.add_argument("--retrieval-split", default="test", help="qrels split of BEIR sets (default test)")
    parser.add_argument(
        "--retrieval-k",
        nargs="+",
        type=int,
        default=None,
        help="cut-offs of the retrieval metrics (default 1 3 5 10 100)",
    )
    parser.add_argument(
        "--query-instruction", default=None, help="prefix for retrieval/reranking queries only, excluded from pooling"
    )
    parser.add_argument(
        "--search", choices=["exact", "faiss"], default="exact", help="top-k search: exact torch chunks or faiss"
    )
    parser.add_argument("--mteb", nargs="+", default=[], metavar="TASK", help="MTEB task names (needs `mteb`)")
    parser.add_argument("--mteb-output", default="mteb-results", help="folder for mteb's result files")
    parser.add_argument(
        "--classifier", nargs="+", default=["logreg"], choices=CLASSIFIERS, help="classifiers (default logreg)"
    )
    parser.add_argument("--folds", type=int, default=10, help="k-fold CV for sets without splits (default 10)")
    parser.add_argument(
        "--c-grid", nargs="+", type=float, default=None, help="tune logreg/svm C over these values (default C=1)"
    )
    parser.add_argument(
        "--max-train", type=int, default=None, help="at most N training rows per split set (stratified sample)"
    )
    parser.add_argument("--n-clusters", type=int, default=None, help="KMeans clusters (default: number of labels)")
    parser.add_argument("--seed", type=int, default=0, help="seed of folds, subsamples, classifiers and KMeans")
    parser.add_argument("--split", default="test", help="split used for Hub STS sources (default: test)")
    parser.add_argument("--clustering-split", default="test", help="split of Hub/per-split clustering sources")
    parser.add_argument("--data-root", default=None, help="folder for relative local paths (else $LIGHTEMBED_DATA)")
    parser.add_argument("--pooling", default=None, help="override the model's pooling")
    parser.add_argument("--max-length", type=int, default=None, help="override the model's token limit")
    parser.add_argument(
        "--truncate-dim", type=int, default=None, help="keep the first D embedding dimensions (Matryoshka models)"
    )
    parser.add_argument("--layers", type=int, default=None, help="run only the first K transformer layers")
    parser.add_argument(
        "--bidirectional",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decoders: bidirectional (--bidirectional) or causal (--no-bidirectional) attention; default: the model's",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu", help="torch device the model runs on, e.g. cuda or cuda:1")
    parser.add_argument("--instruction", default=None, help="prefix for every sentence, excluded from pooling")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON here")
    return parser


def _set_name(source: str) -> str:
    """Name of an unnamed classification or clustering source: the file's stem, or the Hub id's last part."""
    path = Path(source)
    return path.stem if path.suffix else path.name.split(":")[0]


def evaluate_main(argv: Sequence[str]) -> dict:
    """``lightembed evaluate``: run the chosen sets, print markdown tables, optionally write the JSON report."""
    from lightembed.api import load_encoder
    from lightembed.evaluation.classification import SENTEVAL_SETS
    from lightembed.evaluation.clustering import CLUSTERING_SETS
    from lightembed.evaluation.report import build_report, format_report, run_suite, suite_sources
    from lightembed.evaluation.retrieval import DEFAULT_KS
    from lightembed.evaluation.sts import parse_named_sources

    ns = evaluate_parser().parse_args(list(argv))
    _check_data_root(ns.data_root)
    for option, value in (("--folds", ns.folds), ("--max-train", ns.max_train), ("--batch-size", ns.batch_size)):
        if value is not None and value < (2 if option == "--folds" else 1):
            raise ValueError(f"{option} must be at least {2 if option == '--folds' else 1}, got {value}")
    suites = ns.suite
    if suites is None and not (ns.sts or ns.classification or ns.clustering or ns.mteb or ns.retrieval or ns.reranking):
        suites = list(DEFAULT_SUITES)
    chosen = suite_sources(suites or [], ns.data_root)
    sts = {**chosen["sts"], **parse_named_sources(ns.sts, ns.split, ns.data_root)}
    classification = {
        **chosen["classification"],
        **parse_named_sources(ns.classification, what="classification", registry=SENTEVAL_SETS, default_name=_set_name),
    }
    clustering = {
        **chosen["clustering"],
        **parse_named_sources(
            ns.clustering, what="clustering", registry={**SENTEVAL_SETS, **CLUSTERING_SETS}, default_name=_set_name
        ),
    }

    retrieval = parse_named_sources(ns.retrieval, what="retrieval", default_name=_set_name)
    reranking = parse_named_sources(ns.reranking, what="reranking", default_name=_set_name)

    encoder = load_encoder(
        ns.model,
        pooling=ns.pooling,
        max_length=ns.max_length,
        device=ns.device,
        truncate_dim=ns.truncate_dim,
        layers=ns.layers,
        bidirectional=ns.bidirectional,
    )
    results = run_suite(
        encoder,
        sts=sts,
        classification=classification,
        clustering=clustering,
        retrieval=retrieval,
        reranking=reranking,
        classifiers=ns.classifier,
        sts_split=ns.split,
        clustering_split=ns.clustering_split,
        data_root=ns.data_root,
        folds=ns.folds,
        seed=ns.seed,
        c_grid=ns.c_grid,
        max_train=ns.max_train,
        n_clusters=ns.n_clusters,
        batch_size=ns.batch_size,
        precision=ns.precision,
        instruction=ns.instruction,
        retrieval_split=ns.retrieval_split,
        retrieval_ks=ns.retrieval_k or DEFAULT_KS,
        query_instruction=ns.query_instruction,
        search_backend=ns.search,
    )
    if ns.mteb:
        from lightembed.evaluation.mteb import MTEBEncoder, run_mteb

        adapter = MTEBEncoder(
            encoder, batch_size=ns.batch_size, precision=ns.precision, default_instruction=ns.instruction
        )
        results.mteb = run_mteb(adapter, ns.mteb, output_folder=ns.mteb_output)
    report = build_report(results, ns.model, encoder, data_root=ns.data_root)
    header = (
        f"model: {ns.model}  pooling: {encoder.pooling}  precision: {ns.precision}  seed: {ns.seed}  "
        f"commit: {(report['git_commit'] or 'unknown')[:12]}"
    )
    print(format_report(results, header))
    if ns.json:
        _write_json(ns.json, report)
    return report


# ---------------------------------------------------------------------------------------------------- analyze
def analyze_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightembed analyze", description="LLM2Vec analyses of a decoder and PCA pictures of embeddings."
    )
    sub = parser.add_subparsers(dest="analysis", required=True)

    layers = sub.add_parser("layers", help="per-layer cosine of causal vs bidirectional hidden states (decoder)")
    layers.add_argument("model", help="decoder: Hub id, folder or packaged:<name>")
    layers.add_argument(
        "--texts", default=None, help="source of texts (a .txt/.jsonl file or Hub id); default the prefix-test texts"
    )
    layers.add_argument("--column", default="text", help="text column of --texts (default text)")
    layers.add_argument("--limit", type=int, default=200, help="at most N texts (default 200)")

    prefix = sub.add_parser("prefix", help="shared-prefix test: q=(A,B), s+=(A,C), s-=(A,D) (decoder)")
    prefix.add_argument("model", help="decoder: Hub id, folder or packaged:<name>")
    prefix.add_argument("--triples", default=None, help="jsonl with prefix/query/positive/negative (default: shipped)")
    prefix.add_argument("--pooling", choices=["mean", "last"], default="mean", help="pooling of the prefix tokens")

    pca = sub.add_parser("pca", help="PCA picture of embeddings coloured by class, one panel per model")
    pca.add_argument("models", nargs="+", metavar="[TITLE=]MODEL", help="models to compare, e.g. before=A after=B")
    pca.add_argument("--source", required=True, help="labelled set with text/label columns")
    pca.add_argument("--split", default="test", help="split of Hub/per-split sources (default test)")
    pca.add_argument("--limit", type=int, default=1000, help="at most N texts (stratified sample, default 1000)")
    pca.add_argument("--seed", type=int, default=0)
    pca.add_argument("--title", default=None)

    for p in (layers, prefix, pca):
        p.add_argument("--data-root", default=None, help="folder for relative local paths (else $LIGHTEMBED_DATA)")
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--max-length", type=int, default=128)
        p.add_argument("--json", default=None, metavar="PATH", help="write the numbers as JSON here")
        p.add_argument("--plot", default=None, metavar="PNG", help="write the picture here")
        p.add_argument("--device", default="cpu", help="torch device the model runs on, e.g. cuda or cuda:1")
    return parser


def _texts_from(source: str, column: str, limit: int, data_root: str | None) -> list[str]:
    from lightembed.data.sources import load_source

    dataset = load_source(source, [column], split="test", data_root=data_root)
    return list(dataset[column])[:limit]


def analyze_main(argv: Sequence[str]) -> dict:
    """``lightembed analyze layers|prefix|pca``: print a table, optionally write JSON and a PNG."""
    from lightembed.evaluation import analysis, plots

    ns = analyze_parser().parse_args(list(argv))
    _check_data_root(ns.data_root)
    if ns.plot and not ns.plot.lower().endswith(".png"):
        raise ValueError(f"--plot {ns.plot!r}: pictures are written as PNG (give a .png path)")
    out: dict[str, Any]
    if ns.analysis == "layers":
        if ns.texts:
            texts = _texts_from(ns.texts, ns.column, ns.limit, ns.data_root)
        else:
            rows = analysis.load_triples()
            texts = [f"{r['prefix']} {r[k]}" for r in rows for k in ("query", "positive", "negative")][: ns.limit]
        result = analysis.layer_similarity(
            ns.model, texts, batch_size=ns.batch_size, max_length=ns.max_length, device=ns.device
        )
        print(analysis.format_layer_similarity(result))
        out = {"model": ns.model, **result.to_dict()}
        if ns.plot:
            plots.plot_layer_similarity({ns.model: result}, ns.plot)
    elif ns.analysis == "prefix":
        result = analysis.prefix_test(
            ns.model,
            ns.triples,
            pooling=ns.pooling,
            batch_size=ns.batch_size,
            max_length=ns.max_length,
            device=ns.device,
        )
        print(analysis.format_prefix_test(result))
        out = {"model": ns.model, **result.to_dict()}
        if ns.plot:
            plots.plot_prefix_test(result, ns.plot)
    else:
        out = _pca(ns, plots)
    if ns.json:
        _write_json(ns.json, out)
    return out


def _pca(ns: argparse.Namespace, plots: Any) -> dict:
    import numpy as np
    from sklearn.model_selection import train_test_split

    from lightembed.api import load_encoder
    from lightembed.data.sources import load_source

    if not ns.plot:
        raise ValueError("lightembed analyze pca needs --plot PNG (where to write the picture)")
    dataset = load_source(ns.source, ["text", "label"], split=ns.split, data_root=ns.data_root)
    texts, labels = list(dataset["text"]), np.array([str(x) for x in dataset["label"]])
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"--source {ns.source!r} has a single class: nothing to separate")
    if len(texts) > ns.limit:
        keep, _ = train_test_split(np.arange(len(texts)), train_size=ns.limit, stratify=labels, random_state=ns.seed)
        keep = np.sort(keep)
        texts, labels = [texts[i] for i in keep], labels[keep]
    panels = {}
    for spec in ns.models:
        title, sep, model = spec.partition("=")
        if not sep:
            title, model = spec, spec
        encoder = load_encoder(model, max_length=ns.max_length, device=ns.device)
        panels[title] = encoder.encode(texts, batch_size=ns.batch_size).numpy()
    scores = plots.plot_class_separation(panels, labels, ns.plot, title=ns.title or ns.source, seed=ns.seed)
    print("| model | silhouette (cosine) |\n|---|---:|")
    for title, score in scores.items():
        print(f"| {title} | {score:.4f} |")
    return {"source": ns.source, "texts": len(texts), "silhouette": scores, "plot": ns.plot}
