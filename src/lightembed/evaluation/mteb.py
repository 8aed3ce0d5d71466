"""MTEB adapter: a lightembed model with the ``encode`` interface the ``mteb`` package calls.

``mteb`` is an optional dependency: nothing here imports it except :func:`run_mteb`. The adapter is duck-typed:
``encode(sentences, **kwargs) -> np.ndarray`` of shape ``(N, H)``, with the keyword arguments ``mteb`` passes
(``task_name``, ``prompt_type``, ``batch_size``, ``show_progress_bar``, ...) accepted. It also accepts the batched
inputs of newer ``mteb`` releases (an iterable of ``{"text": [...]}`` batches, e.g. a ``DataLoader``).

Instructions (LLM2Vec, E5-style models): ``instructions`` maps a task name to an instruction that is prefixed to the
task's *queries* and excluded from pooling; documents/passages are encoded without it, as LLM2Vec does.

>>> from lightembed.evaluation.mteb import MTEBEncoder, run_mteb
>>> model = MTEBEncoder("packaged:all-MiniLM-L6-v2")
>>> model.encode(["a sentence"], task_name="STSBenchmark").shape
(1, 384)
>>> run_mteb(model, ["STSBenchmark"], output_folder="mteb-results")   # needs `pip install mteb`
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightembed.encoder import TextEncoder
from lightembed.evaluation.encoding import to_numpy

PASSAGE_PROMPT_TYPES = ("passage", "document", "corpus")


def _texts(sentences: Any) -> list[str]:
    """A list of strings from a list of strings, or from an iterable of ``{"text": [...]}`` batches."""
    if isinstance(sentences, str):
        raise TypeError("encode expects a list of texts, got a single string")
    if isinstance(sentences, Sequence) and all(isinstance(s, str) for s in sentences):
        return list(sentences)
    texts: list[str] = []
    for batch in sentences:
        if isinstance(batch, str):
            texts.append(batch)
        elif isinstance(batch, Mapping) and "text" in batch:
            texts.extend(batch["text"])
        else:
            raise TypeError(
                f"cannot read texts from {type(batch).__name__}; expected strings or batches with a 'text' field"
            )
    return texts


def _prompt_type_name(prompt_type: Any) -> str | None:
    if prompt_type is None:
        return None
    return str(getattr(prompt_type, "value", prompt_type)).lower()


class MTEBEncoder:
    """Wrap a lightembed encoder (or a model name for :func:`lightembed.load_encoder`) for ``mteb``.

    Args:
        model: an :class:`~lightembed.encoder.Encoder` or a name (Hub id, folder, ``packaged:<name>``, ``.ckpt``).
        batch_size: default texts per forward pass (``mteb``'s ``batch_size`` keyword wins when given).
        precision: ``float32`` or ``bfloat16``.
        instructions: task name -> instruction for that task's queries (excluded from pooling).
        default_instruction: instruction for tasks not in ``instructions`` (None: no instruction).
        name: model name reported to ``mteb`` (``mteb_model_meta``); default the model's name.
    """

    def __init__(
        self,
        model: str | TextEncoder,
        batch_size: int = 64,
        precision: str = "float32",
        instructions: Mapping[str, str] | None = None,
        default_instruction: str | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(model, str):
            from lightembed.api import load_encoder

            model = load_encoder(model)
        self.model = model
        self.batch_size = batch_size
        self.precision = precision
        self.instructions = dict(instructions or {})
        self.default_instruction = default_instruction
        self.name = name or model.settings.backbone

    def instruction_for(self, task_name: str | None, prompt_type: Any = None) -> str | None:
        """The instruction used for a task's texts: none for passages/documents."""
        if _prompt_type_name(prompt_type) in PASSAGE_PROMPT_TYPES:
            return None
        return self.instructions.get(task_name or "", self.default_instruction)

    def encode(self, sentences: Any, **kwargs: Any) -> np.ndarray:
        """``N`` texts -> ``(N, H)`` float32 array; ``task_name``/``prompt_type``/``batch_size`` keywords honoured."""
        texts = _texts(sentences)
        if not texts:
            return np.zeros((0, self.model.embedding_dim), dtype=np.float32)
        task_name = kwargs.get("task_name")
        if task_name is None and kwargs.get("task_metadata") is not None:
            task_name = getattr(kwargs["task_metadata"], "name", None)
        instruction = self.instruction_for(task_name, kwargs.get("prompt_type"))
        embeddings = self.model.encode(
            texts,
            batch_size=int(kwargs.get("batch_size") or self.batch_size),
            precision=self.precision,
            instruction=instruction,
        )
        return to_numpy(embeddings)

    # mteb's retrieval wrappers look for these on older releases
    def encode_queries(self, queries: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self.encode(queries, **{**kwargs, "prompt_type": "query"})

    def encode_corpus(self, corpus: Iterable[Any], **kwargs: Any) -> np.ndarray:
        texts = [
            (f"{doc.get('title', '')} {doc['text']}".strip() if isinstance(doc, Mapping) else doc) for doc in corpus
        ]
        return self.encode(texts, **{**kwargs, "prompt_type": "passage"})


def _import_mteb() -> Any:
    try:
        return importlib.import_module("mteb")
    except ImportError as err:
        raise ModuleNotFoundError(
            "MTEB evaluation needs the optional package `mteb` (pip install mteb); the adapter "
            "lightembed.evaluation.mteb.MTEBEncoder works without it"
        ) from err


def _main_score(result: Any) -> Any:
    """The main score(s) of one ``mteb`` task result, whatever the release's result type."""
    if hasattr(result, "get_score"):
        try:
            return float(result.get_score())
        except Exception:  # noqa: BLE001 - fall through to the raw scores
            pass
    scores = getattr(result, "scores", None)
    if isinstance(scores, Mapping):
        out = {}
        for split, entries in scores.items():
            values = [e.get("main_score") for e in entries if isinstance(e, Mapping) and "main_score" in e]
            if values:
                out[split] = float(np.mean(values))
        return out
    return None


def run_mteb(
    model: str | TextEncoder | MTEBEncoder,
    tasks: Sequence[str],
    output_folder: str | Path = "mteb-results",
    **run_kwargs: Any,
) -> dict[str, Any]:
    """Run ``mteb`` tasks (by name) on a lightembed model; returns ``{task name: main score}``.

    Extra keyword arguments go to ``mteb.MTEB(...).run``.
    """
    mteb = _import_mteb()
    encoder = model if isinstance(model, MTEBEncoder) else MTEBEncoder(model)
    task_objects = mteb.get_tasks(tasks=list(tasks))
    evaluation = mteb.MTEB(tasks=task_objects)
    results = evaluation.run(encoder, output_folder=str(output_folder), **run_kwargs)
    summary = {}
    for result in results:
        name = getattr(result, "task_name", None) or getattr(result, "name", str(result))
        summary[name] = _main_score(result)
    return summary
