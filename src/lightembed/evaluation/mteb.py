"""MTEB adapter: a lightembed model as an ``mteb`` 2.x ``EncoderProtocol``; :func:`run_mteb` runs ``mteb.evaluate``.

``mteb`` is an optional dependency (``pip install lightembed[mteb]``): only :attr:`MTEBEncoder.mteb_model_meta` and
:func:`run_mteb` import it. The protocol is duck-typed: ``encode(inputs, *, task_metadata, hf_split, hf_subset,
prompt_type)`` gets a ``DataLoader`` of ``{"text": [...]}`` batches (documents arrive as "title text") and returns an
``(N, H)`` float32 array; ``similarity`` / ``similarity_pairwise`` are cosine, as lightembed's own evaluators score.

Instructions (LLM2Vec, E5-style models) are prefixed to a text and excluded from pooling. They are chosen per task and
per ``prompt_type`` (``query``, ``document``, or None for symmetric tasks such as STS), first match wins:

1. ``instructions``, keyed as ``mteb`` keys model prompts: ``"{task}-{query|document}"``, the task name, the task type
   (``"Retrieval"``, ``"STS"``, ...) with or without the ``-query``/``-document`` suffix, or ``"query"``/``"document"``.
   Keys without ``-document`` never apply to documents: as in LLM2Vec, passages are embedded without an instruction.
2. with ``task_prompts=True``, the task's own instruction from its ``mteb`` metadata (``TaskMetadata.prompt``, or its
   task type's default such as "Retrieve semantically similar text."), formatted by ``instruction_template``;
   documents get one only where the task defines a document prompt.
3. ``default_instruction`` for queries and symmetric texts.

>>> from lightembed.evaluation.mteb import MTEBEncoder, run_mteb
>>> model = MTEBEncoder("packaged:all-MiniLM-L6-v2")
>>> run_mteb(model, ["STSBenchmark"], output_folder="mteb-results")   # {task: main score}; needs the mteb extra
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lightembed.encoder import TextEncoder
from lightembed.evaluation.encoding import to_numpy

DOCUMENT_PROMPT_TYPES = ("document", "passage", "corpus")
MTEB_EXTRA = "pip install lightembed[mteb]"


def _texts(inputs: Any) -> list[str]:
    """A list of strings from a list of strings, or from an iterable of ``{"text": [...]}`` batches (a DataLoader)."""
    if isinstance(inputs, str):
        raise TypeError("encode expects a list of texts or a DataLoader of batches, got a single string")
    if isinstance(inputs, Sequence) and all(isinstance(s, str) for s in inputs):
        return list(inputs)
    texts: list[str] = []
    for batch in inputs:
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
    """``PromptType.query`` / ``"query"`` -> ``"query"``; every document alias -> ``"document"``; None stays None."""
    if prompt_type is None:
        return None
    name = str(getattr(prompt_type, "value", prompt_type)).lower()
    return "document" if name in DOCUMENT_PROMPT_TYPES else name


def _task_prompt(task_metadata: Any, prompt_type: str | None) -> str | None:
    """The instruction an ``mteb`` task defines for ``prompt_type`` (its metadata prompt, else its task type's)."""
    prompt = getattr(task_metadata, "prompt", None)
    if isinstance(prompt, Mapping):
        return prompt.get(prompt_type or "query") or None
    if prompt_type == "document":
        return None  # a single task prompt is for queries (and symmetric tasks); documents stay plain
    if prompt:
        return str(prompt)
    from mteb.abstasks.abstask import get_abstask_prompt

    return get_abstask_prompt(task_metadata.name) or None


def _model_name(name: str) -> str:
    """An ``mteb`` model name (``organisation/model``) for a Hub id, a folder, a checkpoint or ``packaged:<name>``."""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists():
        return name
    stem = Path(name.split(":", 1)[-1]).name or "model"
    return "lightembed/" + re.sub(r"[^\w.-]+", "-", stem)


class MTEBEncoder:
    """Wrap a lightembed encoder (or a model name for :func:`lightembed.load_encoder`) for ``mteb``.

    Args:
        model: an :class:`~lightembed.encoder.Encoder` or a name (Hub id, folder, ``packaged:<name>``, ``.ckpt``).
        batch_size: default texts per forward pass (``mteb``'s ``batch_size`` keyword wins when given).
        precision: ``float32`` or ``bfloat16``.
        instructions: ``mteb`` prompt key (task name, task type, ``query``/``document``, ``"{key}-query"``, ...) ->
            instruction; see the module docstring for the order.
        default_instruction: instruction for queries and symmetric texts no other rule covers (None: none).
        task_prompts: use each task's own instruction from its ``mteb`` metadata (instruction-tuned models).
        instruction_template: how a task's prompt becomes the prefix; ``{instruction}`` is the prompt with its
            final ``.``/``:`` removed (LLM2Vec writes "Retrieve semantically similar text: " before the text).
        name: model name reported to ``mteb`` (``organisation/model``; default derived from the model's name).
        revision: model revision reported to ``mteb`` (it names the results folder).
    """

    def __init__(
        self,
        model: str | TextEncoder,
        batch_size: int = 64,
        precision: str = "float32",
        instructions: Mapping[str, str] | None = None,
        default_instruction: str | None = None,
        task_prompts: bool = False,
        instruction_template: str = "{instruction}: ",
        name: str | None = None,
        revision: str = "local",
    ) -> None:
        if "{instruction}" not in instruction_template:
            raise ValueError(f"instruction_template {instruction_template!r} must contain '{{instruction}}'")
        if isinstance(model, str):
            from lightembed.api import load_encoder

            model = load_encoder(model)
        self.model = model
        self.batch_size = batch_size
        self.precision = precision
        self.instructions = dict(instructions or {})
        self.default_instruction = default_instruction
        self.task_prompts = task_prompts
        self.instruction_template = instruction_template
        self.name = _model_name(name or model.settings.backbone)
        self.revision = revision
        self._meta: Any = None

    def instruction_for(self, task_name: str | None, prompt_type: Any = None, task_metadata: Any = None) -> str | None:
        """The instruction prefixed to a task's texts of ``prompt_type`` (None: embed them plainly)."""
        kind = _prompt_type_name(prompt_type)
        task_type = getattr(task_metadata, "type", None)
        if kind == "document":  # only document-specific keys: passages stay plain otherwise
            keys = [(task_name, "-document"), (task_type, "-document"), ("document", "")]
        elif kind:
            keys = [(task_name, f"-{kind}"), (task_name, ""), (task_type, f"-{kind}"), (task_type, ""), (kind, "")]
        else:
            keys = [(task_name, ""), (task_type, "")]
        for base, suffix in keys:
            key = f"{base}{suffix}" if base else None
            if key in self.instructions:
                return self.instructions[key]
        if self.task_prompts and task_metadata is not None:
            prompt = _task_prompt(task_metadata, kind)
            if prompt:
                return self.instruction_template.format(instruction=prompt.strip().rstrip(".:"))
        return None if kind == "document" else self.default_instruction

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        batch_size: int | None = None,
        task_name: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """``N`` texts (a list, or ``mteb``'s DataLoader of ``{"text": [...]}`` batches) -> ``(N, H)`` float32 array.

        Other ``mteb`` keywords (``show_progress_bar``, ...) are accepted and ignored.
        """
        texts = _texts(inputs)
        if not texts:
            return np.zeros((0, self.model.embedding_dim), dtype=np.float32)
        task_name = task_name or getattr(task_metadata, "name", None)
        instruction = self.instruction_for(task_name, prompt_type, task_metadata)
        embeddings = self.model.encode(
            texts, batch_size=int(batch_size or self.batch_size), precision=self.precision, instruction=instruction
        )
        return to_numpy(embeddings)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity of every row of ``embeddings1`` with every row of ``embeddings2``: ``(N1, N2)``."""
        a = F.normalize(torch.as_tensor(np.asarray(embeddings1, dtype=np.float32)).reshape(-1, self._dim(embeddings1)))
        b = F.normalize(torch.as_tensor(np.asarray(embeddings2, dtype=np.float32)).reshape(-1, self._dim(embeddings2)))
        return a @ b.T  # (N1, H) @ (H, N2) -> (N1, N2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity of row ``i`` of ``embeddings1`` with row ``i`` of ``embeddings2``: ``(N,)``."""
        a = torch.as_tensor(np.asarray(embeddings1, dtype=np.float32)).reshape(-1, self._dim(embeddings1))  # (N, H)
        b = torch.as_tensor(np.asarray(embeddings2, dtype=np.float32)).reshape(-1, self._dim(embeddings2))  # (N, H)
        return F.cosine_similarity(a, b, dim=-1)  # (N,)

    @staticmethod
    def _dim(embeddings: Any) -> int:
        return int(np.shape(embeddings)[-1])

    @property
    def mteb_model_meta(self) -> Any:
        """``mteb.ModelMeta`` describing this model (name, revision, size, dimension, cosine similarity)."""
        if self._meta is None:
            _import_mteb()
            from mteb.models import ModelMeta

            module = self.model if isinstance(self.model, torch.nn.Module) else None
            self._meta = ModelMeta(
                loader=None,
                name=self.name,
                revision=self.revision,
                release_date=None,
                languages=None,
                n_parameters=sum(p.numel() for p in module.parameters()) if module is not None else None,
                memory_usage_mb=None,
                max_tokens=getattr(self.model.settings, "max_length", None),
                embed_dim=self.model.embedding_dim,
                license=None,
                open_weights=None,
                public_training_code=None,
                public_training_data=None,
                framework=["PyTorch"],
                similarity_fn_name="cosine",
                use_instructions=bool(self.instructions or self.default_instruction or self.task_prompts),
                training_datasets=None,
            )
        return self._meta


def _import_mteb() -> Any:
    try:
        return importlib.import_module("mteb")
    except ImportError as err:
        raise ModuleNotFoundError(
            f"MTEB evaluation needs the optional package `mteb` ({MTEB_EXTRA}, or pip install mteb)"
        ) from err


def run_mteb(
    model: str | TextEncoder | MTEBEncoder,
    tasks: Sequence[Any],
    output_folder: str | Path = "mteb-results",
    **evaluate_kwargs: Any,
) -> dict[str, float]:
    """Run ``mteb`` tasks on a lightembed model with ``mteb.evaluate``; returns ``{task name: main score}``.

    ``tasks`` are task names (``"STSBenchmark"``) or ``mteb`` task objects (e.g. a local task built from files).
    Results are written under ``output_folder`` (``mteb.ResultCache``); they are recomputed on every call
    (``overwrite_strategy="always"``), since a retrained model keeps its name. Extra keyword arguments go to
    ``mteb.evaluate``. The main score is ``mteb``'s: mean over the task's evaluation splits and subsets, in [0, 1].
    """
    mteb = _import_mteb()
    encoder = model if isinstance(model, MTEBEncoder) else MTEBEncoder(model)
    names = [t for t in tasks if isinstance(t, str)]
    try:
        task_objects = list(mteb.get_tasks(tasks=names)) if names else []
    except KeyError as err:
        raise ValueError(f"unknown MTEB task in {names}: {err.args[0] if err.args else err}") from None
    task_objects += [t for t in tasks if not isinstance(t, str)]
    evaluate_kwargs.setdefault("encode_kwargs", {"batch_size": encoder.batch_size, "show_progress_bar": False})
    evaluate_kwargs.setdefault("overwrite_strategy", "always")
    evaluate_kwargs.setdefault("show_progress_bar", False)
    results = mteb.evaluate(encoder, task_objects, cache=mteb.ResultCache(output_folder), **evaluate_kwargs)
    return {result.task_name: float(result.get_score()) for result in results.task_results}
