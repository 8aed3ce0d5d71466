"""Retrieval and reranking sets from files: the BEIR folder layout, or plain query/positive(/negative) rows.

BEIR layout (a local folder, or a Hub id holding ``corpus`` and ``queries`` configs with a ``<id>-qrels`` dataset
beside it, as the BEIR copies on the Hub do)::

    corpus.jsonl     {"_id": ..., "title": ..., "text": ...}     a document is "title text" (title may be empty)
    queries.jsonl    {"_id": ..., "text": ...}
    qrels/<split>.tsv   query-id <TAB> corpus-id <TAB> score     (header line; score > 0 means relevant)

Plain rows (a jsonl/csv/parquet file with ``query`` and ``positive`` columns, optional ``negative``) become a
retrieval set: each distinct query is a query, every distinct positive and negative text is a document, a query's
positives are its relevant documents. For reranking the same rows give per query its positives and negatives
(``positive``/``negative`` may also hold lists of texts, as in sentence-transformers' reranking format).
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightembed.data.sources import load_source, resolve_data_root
from lightembed.evaluation.reranking import RerankingSample
from lightembed.evaluation.retrieval import RetrievalTask

BEIR_FILES = ("corpus.jsonl", "queries.jsonl")


def _beir_folder(source: str, data_root: str | None) -> Path | None:
    path = Path(source).expanduser()
    root = resolve_data_root(data_root)
    for candidate in [path] if path.is_absolute() else [*([root / path] if root else []), Path.cwd() / path]:
        if candidate.is_dir() and all((candidate / f).is_file() for f in BEIR_FILES):
            return candidate
    return None


def _read_qrels(path: Path) -> dict[str, set[str]]:
    relevant: dict[str, set[str]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle, delimiter="\t")
        for line, row in enumerate(rows, start=1):
            if line == 1 and row and not row[-1].lstrip("-").isdigit():
                continue  # the header
            if len(row) != 3:
                raise ValueError(f"{path} line {line}: expected query-id, corpus-id, score separated by tabs")
            try:
                score = float(row[2])
            except ValueError:
                raise ValueError(f"{path} line {line}: score {row[2]!r} is not a number") from None
            if score > 0:
                relevant.setdefault(row[0], set()).add(row[1])
    return relevant


def _documents(rows: dict[str, list]) -> dict[str, str]:
    titles = rows.get("title") or [""] * len(rows["_id"])
    return {str(i): f"{t or ''} {x}".strip() for i, t, x in zip(rows["_id"], titles, rows["text"], strict=True)}


def load_beir(name: str, source: str, split: str = "test", data_root: str | None = None) -> RetrievalTask:
    """A BEIR-layout set (module docstring) from a local folder or a Hub id; ``split`` picks the qrels file."""
    folder = _beir_folder(source, data_root)
    if folder is not None:
        qrels = folder / "qrels" / f"{split}.tsv"
        if not qrels.is_file():
            found = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
            raise FileNotFoundError(f"{folder}: no qrels/{split}.tsv (splits found: {found}); choose one with --split")
        try:
            corpus = load_source(
                str(folder / "corpus.jsonl"), ["_id", "title", "text"], data_root=None, text_columns=["text"]
            )
        except ValueError as err:  # the title column is optional
            if "missing column(s) ['title']" not in str(err):
                raise
            corpus = load_source(str(folder / "corpus.jsonl"), ["_id", "text"], data_root=None)
        queries = load_source(str(folder / "queries.jsonl"), ["_id", "text"], data_root=None)
        relevant = _read_qrels(qrels)
    else:  # a Hub id: never reached in tests (no network)
        import datasets

        corpus = datasets.load_dataset(source, "corpus", split="corpus")
        queries = datasets.load_dataset(source, "queries", split="queries")
        relevant = {}
        for row in datasets.load_dataset(f"{source}-qrels", split=split):
            if float(row["score"]) > 0:
                relevant.setdefault(str(row["query-id"]), set()).add(str(row["corpus-id"]))
    corpus_rows = corpus.to_dict()
    query_rows = queries.to_dict()
    task = RetrievalTask(
        name=name,
        queries={str(i): t for i, t in zip(query_rows["_id"], query_rows["text"], strict=True)},
        corpus=_documents(corpus_rows),
        relevant={q: docs for q, docs in relevant.items() if q in set(map(str, query_rows["_id"]))},
        source=source,
    )
    unknown = {d for docs in task.relevant.values() for d in docs} - task.corpus.keys()
    if unknown:
        raise ValueError(
            f"{source}: qrels/{split}.tsv names {len(unknown)} corpus id(s) not in corpus.jsonl, e.g. "
            f"{sorted(unknown)[0]!r}"
        )
    return task


def _texts(value: object) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]  # type: ignore[union-attr]


def _pair_rows(source: str, split: str, data_root: str | None) -> tuple[list[str], list[list[str]], list[list[str]]]:
    try:
        ds = load_source(source, ["query", "positive", "negative"], split, data_root)
    except ValueError as err:
        if "missing column" not in str(err) or "'negative'" not in str(err):
            raise
        ds = load_source(source, ["query", "positive"], split, data_root)
    rows = ds.to_dict()
    negatives = rows.get("negative") or [None] * len(rows["query"])
    return rows["query"], [_texts(p) for p in rows["positive"]], [_texts(n) for n in negatives]


def load_pairs_task(name: str, source: str, split: str = "test", data_root: str | None = None) -> RetrievalTask:
    """A retrieval set from query/positive(/negative) rows (module docstring)."""
    queries, positives, negatives = _pair_rows(source, split, data_root)
    query_ids: dict[str, str] = {}
    doc_ids: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for query, pos, neg in zip(queries, positives, negatives, strict=True):
        qid = query_ids.setdefault(query, f"q{len(query_ids)}")
        for text in [*pos, *neg]:
            doc_ids.setdefault(text, f"d{len(doc_ids)}")
        relevant.setdefault(qid, set()).update(doc_ids[t] for t in pos)
    return RetrievalTask(
        name=name,
        queries={qid: text for text, qid in query_ids.items()},
        corpus={did: text for text, did in doc_ids.items()},
        relevant=relevant,
        source=source,
    )


def load_retrieval(name: str, source: str, split: str = "test", data_root: str | None = None) -> RetrievalTask:
    """A BEIR folder or Hub id, or a file of query/positive rows (decided by what ``source`` is)."""
    if _beir_folder(source, data_root) is not None:
        return load_beir(name, source, split, data_root)
    path = Path(source)
    if path.suffix or path.is_dir() or source.startswith(("/", "./", "../", "~")):
        return load_pairs_task(name, source, split, data_root)
    return load_beir(name, source, split, data_root)


def load_reranking(source: str, split: str = "test", data_root: str | None = None) -> list[RerankingSample]:
    """Reranking samples from query/positive/negative rows: rows with the same query are merged."""
    queries, positives, negatives = _pair_rows(source, split, data_root)
    merged: dict[str, RerankingSample] = {}
    for query, pos, neg in zip(queries, positives, negatives, strict=True):
        sample = merged.setdefault(query, RerankingSample(query, [], []))
        sample.positive += [t for t in pos if t not in sample.positive]
        sample.negative += [t for t in neg if t not in sample.negative]
    if not any(s.negative for s in merged.values()):
        raise ValueError(f"reranking source {source!r} has no negative texts (a `negative` column is needed)")
    return list(merged.values())
