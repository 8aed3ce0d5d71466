"""Data module for supervised contrastive training on text pairs/triplets, validated and tested on STS sets.

Training rows come from one source in one of five formats; each is converted to rows with ``anchor``,
``positive`` and, by format, ``negative`` or ``score``:

============== ============================================ ====================================================
train_format   default ``columns`` (source -> field)         training rows
============== ============================================ ====================================================
scored_pairs   sentence1->anchor, sentence2->positive,      anchor, positive, score
               score->score
pairs          sentence1->anchor, sentence2->positive       anchor, positive
triplets       anchor, positive, negative                   anchor, positive, negative
nli_triplets   premise, hypothesis, label                   premise, entailed hypothesis, contradicting one
nli_pairs      premise, hypothesis, label                   premise, hypothesis, score from ``nli_scores``
============== ============================================ ====================================================

Validation and test sets are STS sources (``sentence1``, ``sentence2``, ``score``) named in a dict; the loaders come
in dict order and :attr:`PairDataModule.val_names` / :attr:`PairDataModule.test_names` name them, so a model can
log ``val/<name>_spearman``. Batches are made by :class:`~lightembed.data.collators.PairCollator`.
"""

from __future__ import annotations

from typing import Literal

import datasets
import numpy as np
from lightning import LightningDataModule
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lightembed.backbones import load_tokenizer
from lightembed.data.collators import TEXT_FIELDS, PairCollator
from lightembed.data.nli import nli_to_pairs, nli_to_triplets
from lightembed.data.samplers import EpochRandomSampler, LengthGroupedBatchSampler
from lightembed.data.sources import load_source

TrainFormat = Literal["pairs", "scored_pairs", "triplets", "nli_triplets", "nli_pairs"]

DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "scored_pairs": {"sentence1": "anchor", "sentence2": "positive", "score": "score"},
    "pairs": {"sentence1": "anchor", "sentence2": "positive"},
    "triplets": {"anchor": "anchor", "positive": "positive", "negative": "negative"},
    "nli_triplets": {"premise": "premise", "hypothesis": "hypothesis", "label": "label"},
    "nli_pairs": {"premise": "premise", "hypothesis": "hypothesis", "label": "label"},
}
"""Source column -> field, per training format; the fields of a format are fixed, the source names can be mapped."""

STS_COLUMNS: dict[str, str] = {"sentence1": "anchor", "sentence2": "positive", "score": "score"}
"""Columns of a validation/test STS source and the batch fields they become."""


def _renamed(ds: datasets.Dataset, mapping: dict[str, str]) -> datasets.Dataset:
    renames = {src: dst for src, dst in mapping.items() if src != dst}
    return ds.rename_columns(renames) if renames else ds


class PairDataModule(LightningDataModule):
    """Pairs or triplets for contrastive training, STS sets for validation and test.

    Args:
        train: training source: local file/glob/directory or Hub id ``owner/name[:config]``; None for eval only.
        train_format: how to read the training source (table in the module docstring).
        columns: source column -> field (``anchor``/``positive``/``negative``/``score``, or ``premise``/
            ``hypothesis``/``label`` for ``nli_*``); default per format as in the table.
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
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle (the order is fixed by seed and epoch).
        score_range: inclusive ``(low, high)`` bounds checked on training scores (``scored_pairs`` only).
        nli_scores: score per NLI label for ``nli_pairs``; default entailment 1.0, neutral 0.5, contradiction 0.0.
        on_bad_row: ``"error"`` stops on an empty text, bad score or unknown NLI label, naming file and row;
            ``"skip"`` drops such rows and logs how many.
        instructions: training field -> instruction prefixed to its texts and excluded from pooling, e.g.
            ``{"anchor": "Given a premise, retrieve a hypothesis that is entailed by the premise: "}`` (LLM2Vec).
        eval_instruction: instruction prefixed to both sentences of validation/test STS pairs (excluded from
            pooling), e.g. ``"Retrieve semantically similar text: "``.
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
        num_workers: int = 0,
        seed: int = 0,
        score_range: tuple[float, float] | None = None,
        nli_scores: dict[str, float] | None = None,
        on_bad_row: Literal["error", "skip"] = "error",
        instructions: dict[str, str] | None = None,
        eval_instruction: str | None = None,
    ) -> None:
        super().__init__()
        if train_format not in DEFAULT_COLUMNS:
            raise ValueError(f"train_format must be one of {list(DEFAULT_COLUMNS)}, got {train_format!r}")
        columns = dict(DEFAULT_COLUMNS[train_format] if columns is None else columns)
        fields = sorted(DEFAULT_COLUMNS[train_format].values())
        if sorted(columns.values()) != fields:
            raise ValueError(
                f"columns for train_format={train_format!r} must map source columns to each of {fields} once; "
                f"got {columns}"
            )
        if score_range is not None and train_format != "scored_pairs":
            raise ValueError(f"score_range applies to train_format='scored_pairs' only, not {train_format!r}")
        if nli_scores is not None and train_format != "nli_pairs":
            raise ValueError(f"nli_scores applies to train_format='nli_pairs' only, not {train_format!r}")
        self.save_hyperparameters()
        self.train_source = train
        self.train_format = train_format
        self.columns = columns
        self.val_sources = dict(val or {})
        self.test_sources = dict(test or {})
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.data_root = data_root
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.length_grouping = length_grouping
        self.num_workers = num_workers
        self.seed = seed
        self.score_range = score_range
        self.nli_scores = nli_scores
        self.on_bad_row = on_bad_row
        self.instructions = dict(instructions or {})
        self.eval_instructions = {"anchor": eval_instruction, "positive": eval_instruction} if eval_instruction else {}

        self.train_dataset: datasets.Dataset | None = None
        self.val_datasets: list[datasets.Dataset] | None = None
        self.test_datasets: list[datasets.Dataset] | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._train_lengths: np.ndarray | None = None

    @property
    def val_names(self) -> list[str]:
        """Names of the validation sets, in dataloader order."""
        return list(self.val_sources)

    @property
    def test_names(self) -> list[str]:
        """Names of the test sets, in dataloader order."""
        return list(self.test_sources)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer named by the ``tokenizer`` option, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def _load_train(self) -> datasets.Dataset:
        assert self.train_source is not None
        by_field = {dst: src for src, dst in self.columns.items()}
        try:
            ds = load_source(
                self.train_source,
                list(self.columns),
                self.train_split,
                self.data_root,
                text_columns=[src for src, dst in self.columns.items() if dst not in ("score", "label")],
                score_column=by_field.get("score"),
                score_range=self.score_range,
                on_bad_row=self.on_bad_row,
            )
            ds = _renamed(ds, self.columns)
            if self.train_format == "nli_triplets":
                ds = nli_to_triplets(ds, on_bad_row=self.on_bad_row)
            elif self.train_format == "nli_pairs":
                ds = nli_to_pairs(ds, self.nli_scores, on_bad_row=self.on_bad_row)
        except (ValueError, FileNotFoundError) as err:
            err.add_note(f"while loading the training data: train={self.train_source!r}, columns={self.columns}")
            raise
        return ds

    def _load_sts(self, option: str, sources: dict[str, str], split: str) -> list[datasets.Dataset]:
        loaded = []
        for name, source in sources.items():
            try:
                ds = load_source(
                    source, list(STS_COLUMNS), split, self.data_root, score_column="score", on_bad_row=self.on_bad_row
                )
            except (ValueError, FileNotFoundError) as err:
                err.add_note(f"while loading {option}[{name!r}] = {source!r} (split {split!r})")
                raise
            loaded.append(_renamed(ds, STS_COLUMNS))
        return loaded

    def setup(self, stage: str | None = None) -> None:
        """Load and convert the sources the stage needs; each is loaded once."""
        if stage in (None, "fit") and self.train_dataset is None and self.train_source is not None:
            self.train_dataset = self._load_train()
        if stage in (None, "fit", "validate") and self.val_datasets is None:
            self.val_datasets = self._load_sts("val", self.val_sources, self.val_split)
        if stage in (None, "test") and self.test_datasets is None:
            self.test_datasets = self._load_sts("test", self.test_sources, self.test_split)

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

    def _loader(self, ds: datasets.Dataset, batch_size: int) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=False,
            collate_fn=PairCollator(self.tokenizer, self.max_length, self.eval_instructions),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self._require(self.train_dataset, "train")
        collate = PairCollator(self.tokenizer, self.max_length, self.instructions)
        workers = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        if self.length_grouping:
            batch_sampler = LengthGroupedBatchSampler(self.train_lengths(), self.batch_size, seed=self.seed)
            return DataLoader(ds, batch_sampler=batch_sampler, collate_fn=collate, **workers)
        sampler = EpochRandomSampler(len(ds), self.seed)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, collate_fn=collate, **workers)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, self.eval_batch_size) for ds in self._require(self.val_datasets, "validation")]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, self.eval_batch_size) for ds in self._require(self.test_datasets, "test")]
