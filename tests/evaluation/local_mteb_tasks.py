"""``mteb`` tasks built from local files, so the real package runs offline: no Hub dataset is ever loaded.

An ``mteb`` 2.x task is an ``AbsTask`` subclass with a ``TaskMetadata`` and a ``load_data`` that fills
``self.dataset``; overriding ``load_data`` is how ``mteb``'s own mock tasks avoid the Hub, and these do the same with
rows read from a JSON-lines file or given in code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata


def _metadata(name: str, task_type: str, main_score: str, prompt: Any = None) -> TaskMetadata:
    return TaskMetadata(
        name=name,
        type=task_type,
        main_score=main_score,
        description=f"{name}: a local {task_type} task for lightembed's tests.",
        reference="https://github.com/embeddings-benchmark/mteb",
        dataset={"path": f"local/{name}", "revision": "local"},
        category="t2t",
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        date=("2024-01-01", "2024-01-01"),
        dialect=[],
        domains=[],
        task_subtypes=[],
        license="cc-by-4.0",
        annotations_creators="derived",
        modalities=["text"],
        sample_creation="found",
        bibtex_citation="",
        prompt=prompt,
    )


def sts_task(path: Path, name: str = "LocalSTS", prompt: Any = None) -> AbsTaskSTS:
    """An STS task whose test split is ``path`` (JSON lines with sentence1, sentence2, score in [0, 5])."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

    def load_data(self: AbsTaskSTS, num_proc: int | None = None, **kwargs: Any) -> None:
        columns = {key: [row[key] for row in rows] for key in ("sentence1", "sentence2", "score")}
        self.dataset = DatasetDict({"test": Dataset.from_dict(columns)})
        self.data_loaded = True

    cls = type(name, (AbsTaskSTS,), {"metadata": _metadata(name, "STS", "cosine_spearman", prompt)})
    cls.load_data = load_data
    return cls()


def retrieval_task(
    queries: dict[str, str],
    corpus: dict[str, str],
    qrels: dict[str, dict[str, int]],
    name: str = "LocalRetrieval",
    prompt: Any = None,
) -> AbsTaskRetrieval:
    """A retrieval task: query id -> text, document id -> text, query id -> {document id: relevance}."""

    def load_data(self: AbsTaskRetrieval, num_proc: int | None = None, **kwargs: Any) -> None:
        split = RetrievalSplitData(
            queries=Dataset.from_list([{"id": qid, "text": text} for qid, text in queries.items()]),
            corpus=Dataset.from_list([{"id": did, "text": text, "title": ""} for did, text in corpus.items()]),
            relevant_docs=qrels,
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True

    cls = type(name, (AbsTaskRetrieval,), {"metadata": _metadata(name, "Retrieval", "ndcg_at_10", prompt)})
    cls.load_data = load_data
    return cls()
