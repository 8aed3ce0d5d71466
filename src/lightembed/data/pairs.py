"""Data module for supervised contrastive training on text pairs/triplets, validated and tested on STS sets.

Training rows come from one source in one row format (:mod:`lightembed.data.formats`: ``pairs``, ``scored_pairs``,
``triplets``, ``nli_triplets``, ``nli_scored_pairs``, ``nli_entailment_pairs``, ``labelled_texts``,
``labelled_pairs``, ``nli_labelled_pairs``); each is converted to rows with ``anchor``, ``positive`` and, by format,
``negative``, ``score`` or ``label`` (``labelled_texts``: ``anchor`` and ``label`` only). ``examples_per_class``
makes P x K class batches (:class:`~lightembed.data.class_sampler.ClassBatchSampler`) for the batch triplet losses.

Validation and test sets are STS sources (``sentence1``, ``sentence2``, ``score``) named in a dict
(:class:`~lightembed.data.sts_sets.STSSets`); the loaders come in dict order and :attr:`PairDataModule.val_names` /
:attr:`PairDataModule.test_names` name them, so a model can log ``val/<name>_spearman``. Batches are made by
:class:`~lightembed.data.collators.PairCollator`.
"""

from __future__ import annotations

from typing import Literal

import datasets
import numpy as np
from lightning import LightningDataModule
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lightembed.data.class_sampler import ClassBatchSampler
from lightembed.data.collators import TEXT_FIELDS, PairCollator
from lightembed.data.formats import (
    FORMATS,
    STS_SCORE_RANGE,
    FormatName,
    checked_columns,
    convert,
    format_named,
    to_fields,
)
from lightembed.data.samplers import EpochRandomSampler, LengthGroupedBatchSampler
from lightembed.data.sources import load_source, row_locator
from lightembed.data.sts_sets import STSEvaluation, STSSets

TrainFormat = FormatName | Literal["nli_pairs"]
"""The row formats of :mod:`lightembed.data.formats`; ``nli_pairs`` is the deprecated name of ``nli_scored_pairs``."""


class PairDataModule(STSEvaluation, LightningDataModule):
    """Pairs or triplets for contrastive training, STS sets for validation and test.

    Args:
        train: training source: local file/glob/directory or Hub id ``owner/name[:config]``; None for eval only.
        train_format: the row format of the training source (table in :mod:`lightembed.data.formats`); the
            deprecated ``nli_pairs`` reads as ``nli_scored_pairs``, with a warning.
        columns: source column -> field (``anchor``/``positive``/``negative``/``score``, or ``premise``/
            ``hypothesis``/``label`` for ``nli_*``); default per format.
        val: validation STS sets, name -> source with ``sentence1``, ``sentence2``, ``score``, in order.
        test: test STS sets, like ``val``.
        train_split: split read from a Hub id or a per-split directory for ``train``.
        val_split: split read for ``val`` sources.
        test_split: split read for ``test`` sources.
        data_root: folder for relative local sources; default ``$LIGHTEMBED_DATA``.
        tokenizer: tokenizer name or path, as for :func:`lightembed.backbones.load_tokenizer`.
        max_length: longest tokenized text; longer ones are truncated.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        length_grouping: batch training rows of similar token length (:class:`LengthGroupedBatchSampler`).
        examples_per_class: ``K``: each training batch holds ``batch_size / K`` classes with ``K`` examples each
            (:class:`~lightembed.data.class_sampler.ClassBatchSampler`), so every anchor of a batch triplet loss has a
            positive and negatives; needs ``train_format: labelled_texts`` and ``batch_size`` a multiple of ``K``.
            None draws random batches.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle (the order is fixed by seed and epoch).
        score_range: inclusive ``(low, high)`` bounds checked on training scores (``scored_pairs`` only).
        nli_scores: score per NLI label for ``nli_scored_pairs``; default entailment 1.0, neutral 0.5,
            contradiction 0.0.
        on_bad_row: ``"error"`` stops on an empty text, bad score or unknown NLI label, naming file and row;
            ``"skip"`` drops such rows and logs how many.
        instructions: training field -> instruction prefixed to its texts and excluded from pooling, e.g.
            ``{"anchor": "Given a premise, retrieve a hypothesis that is entailed by the premise: "}`` (LLM2Vec).
        eval_instruction: instruction prefixed to both sentences of validation/test STS pairs (excluded from
            pooling), e.g. ``"Retrieve semantically similar text: "``.
        sts_score_range: inclusive bounds of the gold scores of the ``val``/``test`` STS sets (default 0-5); a score
            outside is a bad row. None accepts any finite score.
    """

    def __init__(
        self,
        train: str | None = None,
        train_format: TrainFormat = "scored_pairs",
        columns: dict[str, str] | None = None,
        val: dict[str, str] | None = None,
        test: dict[str, str] | None = None,
        train_split: str = "train",
        val_split: str = "validation",
        test_split: str = "test",
        data_root: str | None = None,
        tokenizer: str = "packaged:all-MiniLM-L6-v2",
        max_length: int = 128,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        length_grouping: bool = False,
        examples_per_class: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        score_range: tuple[float, float] | None = None,
        nli_scores: dict[str, float] | None = None,
        on_bad_row: Literal["error", "skip"] = "error",
        instructions: dict[str, str] | None = None,
        eval_instruction: str | None = None,
        sts_score_range: tuple[float, float] | None = STS_SCORE_RANGE,
    ) -> None:
        super().__init__()
        fmt = format_named(train_format, "train_format", tuple(FORMATS), old_meaning="nli_scored_pairs")
        columns = fmt.mapping(columns, f"columns for train_format={fmt.name!r}")
        if score_range is not None and "score" not in fmt.required:
            raise ValueError(f"score_range applies to train_format='scored_pairs' only, not {fmt.name!r}")
        if nli_scores is not None and fmt.conversion != "nli_scored_pairs":
            raise ValueError(f"nli_scores applies to train_format='nli_scored_pairs' only, not {fmt.name!r}")
        if examples_per_class is not None:
            if fmt.conversion != "class_ids":
                raise ValueError(f"examples_per_class needs train_format='labelled_texts', not {fmt.name!r}")
            if length_grouping:
                raise ValueError("examples_per_class and length_grouping both choose the batches: set only one")
            if examples_per_class < 2 or batch_size % examples_per_class or batch_size // examples_per_class < 2:
                raise ValueError(
                    f"examples_per_class ({examples_per_class}) must be >= 2 and divide batch_size ({batch_size}) "
                    "into at least 2 classes per batch"
                )
        self.save_hyperparameters()
        self.train_source = train
        self.train_format = fmt.name
        self.row_format = fmt
        self.columns = columns
        self.sts = STSSets(val, test, val_split, test_split, data_root, on_bad_row, score_range=sts_score_range)
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.data_root = data_root
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.length_grouping = length_grouping
        self.examples_per_class = examples_per_class
        self.num_workers = num_workers
        self.seed = seed
        self.score_range = score_range
        self.nli_scores = nli_scores
        self.on_bad_row = on_bad_row
        self.instructions = dict(instructions or {})
        self.eval_instruction = eval_instruction

        self.train_dataset: datasets.Dataset | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._train_lengths: np.ndarray | None = None

    def _load_train(self) -> datasets.Dataset:
        assert self.train_source is not None
        text_columns, score_column = checked_columns(self.row_format, self.columns)
        try:
            ds = load_source(
                self.train_source,
                list(self.columns),
                self.train_split,
                self.data_root,
                text_columns=text_columns,
                score_column=score_column,
                score_range=self.score_range,
                on_bad_row=self.on_bad_row,
            )
            locate = row_locator(self.train_source, self.train_split, self.data_root)
            ds = convert(to_fields(ds, self.columns), self.row_format, self.on_bad_row, self.nli_scores, locate)
        except (ValueError, FileNotFoundError) as err:
            err.add_note(f"while loading the training data: train={self.train_source!r}, columns={self.columns}")
            raise
        return ds

    def setup(self, stage: str | None = None) -> None:
        """Load and convert the sources the stage needs; each is loaded once."""
        if stage in (None, "fit") and self.train_dataset is None and self.train_source is not None:
            self.train_dataset = self._load_train()
        self.sts.setup(stage)

    def train_lengths(self) -> np.ndarray:
        """Token count per training row (anchor + positive [+ negative], each capped at ``max_length``)."""
        if self._train_lengths is None:
            ds = self._require(self.train_dataset, "train")
            total = np.zeros(len(ds), dtype=np.int64)
            for field in TEXT_FIELDS:
                if field in ds.column_names:
                    encoded = self.tokenizer(ds[field][:], truncation=True, max_length=self.max_length)
                    total += np.fromiter(map(len, encoded["input_ids"]), dtype=np.int64, count=len(ds))
            self._train_lengths = total
        return self._train_lengths

    def _require(self, dataset: datasets.Dataset | None, option: str) -> datasets.Dataset:
        if dataset is None:
            if option == "train" and self.train_source is None:
                raise ValueError("PairDataModule has no training source: set the `train` option")
            raise RuntimeError(f"call setup() before asking for the {option} data")
        return dataset

    def train_dataloader(self) -> DataLoader:
        ds = self._require(self.train_dataset, "train")
        collate = PairCollator(self.tokenizer, self.max_length, self.instructions)
        workers = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        if self.examples_per_class is not None:
            k = self.examples_per_class
            batch_sampler = ClassBatchSampler(ds["label"], self.batch_size // k, k, seed=self.seed)
            return DataLoader(ds, batch_sampler=batch_sampler, collate_fn=collate, **workers)
        if self.length_grouping:
            batch_sampler = LengthGroupedBatchSampler(self.train_lengths(), self.batch_size, seed=self.seed)
            return DataLoader(ds, batch_sampler=batch_sampler, collate_fn=collate, **workers)
        sampler = EpochRandomSampler(len(ds), self.seed)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, collate_fn=collate, **workers)
