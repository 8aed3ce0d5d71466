"""Data for distillation: training texts whose batches carry the teacher's embeddings, and STS sets to validate on.

The training source is read by the existing modules, so it takes the same sources, formats and row checks:

- ``train_format: lines`` or ``wikitext``: one text per line/row (:class:`~lightembed.data.corpus.CorpusDataModule`'s
  cleaning), each an ``anchor``: the sentences of MSE distillation.
- any row format of :mod:`lightembed.data.formats` (``triplets``, ``nli_triplets``, ``pairs``, ...; read by
  :class:`~lightembed.data.pairs.PairDataModule`): its text fields ``anchor``, ``positive`` (and ``negative``).
  (query, positive, negative) triplets are what MarginMSE needs; MSE distils every text of every field.

The teacher's embeddings are not computed here: the stage (:class:`~lightembed.stages.distill.DistillationModule`)
asks for :meth:`DistillationDataModule.teacher_texts` in its ``setup``, reads or fills the teacher cache
(:mod:`lightembed.data.teacher_cache`) and hands the table back with :meth:`~DistillationDataModule.set_teacher`
before the first training batch; each batch then carries each text's row of it (:class:`DistillationBatch`).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from lightembed.data.batches import Features
from lightembed.data.collators import TEXT_FIELDS, PairCollator, text_ids
from lightembed.data.corpus import CorpusDataModule
from lightembed.data.formats import FORMATS, STS_SCORE_RANGE, FormatName
from lightembed.data.pairs import PairDataModule
from lightembed.data.samplers import EpochRandomSampler
from lightembed.data.sts_sets import STSEvaluation, STSSets

TEXT_FORMATS = ("lines", "wikitext")
DistillFormat = Literal["lines", "wikitext"] | FormatName


class DistillationBatch(TypedDict, total=False):
    """A distillation training batch: the text fields of the rows (``anchor`` always; ``positive`` and ``negative``
    for pair and triplet rows), their duplicate ids, and the teacher's embedding of every text of each field."""

    anchor: Features
    positive: Features
    negative: Features
    anchor_ids: Tensor  # (B,) int64, equal ids = same text
    positive_ids: Tensor  # (B,) int64
    negative_ids: Tensor  # (B,) int64
    teacher_anchor: Tensor  # (B, T) float32, the teacher's embedding of each anchor text
    teacher_positive: Tensor  # (B, T) float32
    teacher_negative: Tensor  # (B, T) float32


class DistillationDataModule(STSEvaluation, LightningDataModule):
    """Training texts for distillation (with the teacher's embeddings in every batch), STS sets for validation/test.

    Args:
        train: training source: a local file/glob/directory (relative to ``data_root``) or a Hub id.
        train_format: ``lines``/``wikitext`` (one text per row, read from ``text_column``) or a row format of
            :mod:`lightembed.data.formats` (module docstring).
        text_column: the text column of ``lines``/``wikitext`` sources (a ``.txt`` file's lines are ``text``).
        columns: source column -> field for a row format (default: the format's).
        val: validation STS sets, name -> source with ``sentence1``, ``sentence2``, ``score``, in order.
        test: test STS sets, like ``val``.
        train_split: split read from a Hub id or a per-split directory for ``train``.
        val_split: split read for ``val`` sources.
        test_split: split read for ``test`` sources.
        data_root: folder for relative local sources; default ``$LIGHTEMBED_DATA``.
        tokenizer: the student's tokenizer (linked to the stage's backbone by ``lightembed fit``).
        max_length: longest tokenized student text (linked to the stage's ``max_length``).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        max_samples: keep only the first N training rows (after cleaning); None keeps all.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle (the order is fixed by seed and epoch).
        sts_score_range: inclusive bounds of the gold scores of the STS sets (default 0-5); None: any finite score.
    """

    def __init__(
        self,
        train: str,
        train_format: DistillFormat = "lines",
        text_column: str = "text",
        columns: dict[str, str] | None = None,
        val: dict[str, str] | None = None,
        test: dict[str, str] | None = None,
        train_split: str = "train",
        val_split: str = "validation",
        test_split: str = "test",
        data_root: str | None = None,
        tokenizer: str = "packaged:all-MiniLM-L6-v2",
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        max_samples: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        sts_score_range: tuple[float, float] | None = STS_SCORE_RANGE,
    ) -> None:
        super().__init__()
        if train_format not in (*TEXT_FORMATS, *FORMATS):
            raise ValueError(f"train_format must be one of {[*TEXT_FORMATS, *FORMATS]}, got {train_format!r}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"data.max_samples must be >= 1 or None, got {max_samples}")
        self.save_hyperparameters()
        self.train_source, self.train_format = train, train_format
        self.text_column, self.columns = text_column, columns
        self.sts = STSSets(val, test, val_split, test_split, data_root, score_range=sts_score_range)
        self.train_split, self.data_root = train_split, data_root
        self.tokenizer_name, self.max_length = tokenizer, max_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.max_samples, self.num_workers, self.seed = max_samples, num_workers, seed
        self.eval_instruction: str | None = None  # STSEvaluation's loaders read it
        self._tokenizer = None
        self.fields: list[str] = []  # text fields of the training rows, in batch order
        self.rows: dict[str, list[str]] | None = None  # field -> its text in each training row
        self._texts: list[str] = []  # every distinct training text once: the teacher's rows
        self._positions: dict[str, np.ndarray] = {}  # field -> (R,) position of each row's text in _texts
        self._teacher: Tensor | None = None

    # ------------------------------------------------------------------ reading
    def _read_rows(self) -> dict[str, list[str]]:
        """The training texts per field, read and checked by the corpus or pair module."""
        if self.train_format in TEXT_FORMATS:
            corpus = CorpusDataModule(
                self.train_source,
                objective="simcse",
                format=self.train_format,  # type: ignore[arg-type]
                text_column=self.text_column,
                train_split=self.train_split,
                data_root=self.data_root,
                tokenizer=self.tokenizer_name,
                max_samples=self.max_samples,
            )
            corpus.setup("fit")
            return {"anchor": list(corpus.train_dataset["text"])}
        pairs = PairDataModule(
            self.train_source,
            train_format=self.train_format,  # type: ignore[arg-type]
            columns=self.columns,
            train_split=self.train_split,
            data_root=self.data_root,
            tokenizer=self.tokenizer_name,
        )
        pairs.setup("fit")
        ds = pairs.train_dataset
        if self.max_samples is not None and self.max_samples < len(ds):
            ds = ds.select(range(self.max_samples))
        return {field: list(ds[field]) for field in TEXT_FIELDS if field in ds.column_names}

    def setup(self, stage: str | None = None) -> None:
        """Load the training rows (once) and the STS sets the stage needs."""
        if stage in (None, "fit") and self.rows is None:
            rows = self._read_rows()
            self.fields = [f for f in TEXT_FIELDS if f in rows]
            position: dict[str, int] = {}
            for field in self.fields:
                self._positions[field] = np.fromiter(
                    (position.setdefault(text, len(position)) for text in rows[field]), np.int64, len(rows[field])
                )
            self._texts = list(position)
            self.rows = rows
        self.sts.setup(stage)

    # ------------------------------------------------------------------ teacher
    def teacher_texts(self) -> list[str]:
        """Every distinct training text once, in first-seen order: the rows of the table :meth:`set_teacher` takes."""
        if self.rows is None:
            raise RuntimeError("call setup('fit') before asking for the texts to distil")
        return list(self._texts)

    def set_teacher(self, embeddings: Tensor) -> None:
        """The teacher's embeddings of :meth:`teacher_texts`, row for row: ``(N, T)``."""
        if embeddings.dim() != 2 or embeddings.shape[0] != len(self._texts):
            raise ValueError(
                f"teacher embeddings must have shape ({len(self._texts)}, T), one row per text, got "
                f"{tuple(embeddings.shape)}"
            )
        self._teacher = embeddings.float()

    # ------------------------------------------------------------------ loaders
    def _collate(self, collator: PairCollator, indices: list[int]) -> DistillationBatch:
        assert self.rows is not None and self._teacher is not None
        batch = DistillationBatch()
        for field in self.fields:
            texts = [self.rows[field][i] for i in indices]
            batch[field] = collator.encode_texts(texts)  # type: ignore[literal-required]
            batch[f"{field}_ids"] = text_ids(texts)  # type: ignore[literal-required]  # (B,)
            rows = torch.from_numpy(self._positions[field][indices])  # (B,)
            batch[f"teacher_{field}"] = self._teacher[rows]  # type: ignore[literal-required]  # (B, T)
        return batch

    def train_dataloader(self) -> DataLoader:
        if self.rows is None:
            raise RuntimeError("call setup('fit') before asking for the training data")
        if self._teacher is None:
            raise RuntimeError(
                "DistillationDataModule has no teacher embeddings: the distillation stage sets them in its setup "
                "(train it with lightembed.stages.DistillationModule)"
            )
        count = len(self.rows[self.fields[0]])
        workers: dict[str, Any] = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        sampler = EpochRandomSampler(count, self.seed)
        collate = partial(self._collate, PairCollator(self.tokenizer, self.max_length))  # one collator per loader
        return DataLoader(range(count), batch_size=self.batch_size, sampler=sampler, collate_fn=collate, **workers)
