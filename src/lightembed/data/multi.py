"""Several named pair/triplet datasets in one training run, batched one dataset at a time or mixed.

The "1B pairs" sentence-embedding recipe: contrastive quality grows with the batch size and with hard negatives;
batches built from one dataset at a time are topic-coherent (harder in-batch negatives), while training on at least
two datasets teaches the global structure. :class:`MultiDatasetDataModule` takes named sources, each a
:class:`~lightembed.data.pair_sources.PairSource` (or just a source string: a ``sentence1``/``sentence2`` pair
file) in a row format of :mod:`lightembed.data.formats` (``pairs``, ``triplets``, ``nli_triplets``,
``nli_entailment_pairs``), filtered by column values (``where: {label: 1}``), a score (``min_score: 4.0``) and
``limit``, and converted to rows ``anchor``, ``positive`` [, ``negative``].

The parts it composes:

- reading: :func:`~lightembed.data.pair_sources.load_pairs` (in memory) or
  :func:`~lightembed.data.pair_sources.stream_pairs` (``streaming: true``), one source layer for both;
- batching: :class:`~lightembed.data.samplers.MultiDatasetBatchSampler` in memory (``batching: single | mixed``,
  ``interleave``, ``no_duplicates``), :class:`~lightembed.data.streaming.StreamingPairBatches` when any source
  streams; both follow :mod:`lightembed.data.no_duplicates`;
- tokens: :class:`~lightembed.data.collators.PairCollator`, or with ``cache_tokenization`` the cached tokens of
  :mod:`lightembed.data.token_cache`;
- validation and test: STS sets (:class:`~lightembed.data.sts_sets.STSSets`), as in
  :class:`~lightembed.data.pairs.PairDataModule`.

Every batch is tokenised by one collator call, so all rows of a batch need the same fields: in ``mixed`` mode,
datasets with and without ``negative`` cannot share batches, and the negatives are dropped (with a warning) unless
every dataset has them. In ``single`` mode each dataset keeps its own fields.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import datasets
import numpy as np
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from lightembed.data.collators import TEXT_FIELDS, PairCollator
from lightembed.data.formats import STS_SCORE_RANGE
from lightembed.data.no_duplicates import row_hashes
from lightembed.data.pair_sources import PairSource, as_pair_source, load_pairs, stream_pairs
from lightembed.data.samplers import BatchingMode, Interleave, MultiDatasetBatchSampler, SmallDataset
from lightembed.data.streaming import StreamingPairBatches
from lightembed.data.sts_sets import STSEvaluation, STSSets
from lightembed.data.token_cache import PretokenizedPairCollator, cache_file, tokenized

__all__ = [
    "MultiDataset",
    "MultiDatasetDataModule",
    "PairSource",
    "PretokenizedPairCollator",
    "StreamingPairBatches",
    "as_pair_source",
    "load_pairs",
    "stream_pairs",
]

log = logging.getLogger(__name__)


class MultiDataset(Dataset):
    """Named datasets laid end to end: global index ``offsets[d] + i`` is row ``i`` of dataset ``d``.

    Items are dicts of the dataset's columns: its text fields (and ``<field>.<feature>`` token lists when the
    tokenisation is cached, see :class:`PretokenizedPairCollator`). ``__getitems__`` fetches a whole batch with one
    columnar read per dataset (the DataLoader uses it with a batch sampler).
    """

    def __init__(self, parts: Mapping[str, datasets.Dataset]) -> None:
        if not parts:
            raise ValueError("MultiDataset needs at least one dataset")
        self.names = list(parts)
        self.parts = list(parts.values())
        self.sizes = [len(ds) for ds in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.fields = [[f for f in TEXT_FIELDS if f in ds.column_names] for ds in self.parts]
        self.columns = [list(ds.column_names) for ds in self.parts]  # fields, plus cached tokens if any

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def dataset_of(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dataset number of each global index."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"index out of range for a MultiDataset of {len(self)} rows")
        return np.searchsorted(self.offsets, indices, side="right") - 1

    def __getitem__(self, index: int) -> dict[str, str]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, str]]:
        indices = np.asarray(indices, dtype=np.int64)
        owners = self.dataset_of(indices)
        rows: list[dict[str, str]] = [{} for _ in range(len(indices))]
        for d in np.unique(owners).tolist():
            where = np.flatnonzero(owners == d)
            columns = self.parts[d][(indices[where] - self.offsets[d]).tolist()]  # one columnar read
            for f in self.columns[d]:
                for position, value in zip(where.tolist(), columns[f], strict=True):
                    rows[position][f] = value
        return rows


class MultiDatasetDataModule(STSEvaluation, LightningDataModule):
    """Several named pair/triplet datasets for contrastive training; STS sets for validation and test.

    Args:
        train: name -> :class:`~lightembed.data.pair_sources.PairSource` (or a dict of its fields, or a source string
            read as ``pairs``), in order; e.g. ``{snli: {source: nli/snli/validation.jsonl, format: nli_triplets}}``.
        batching: ``"single"`` (every batch from one dataset) or ``"mixed"`` (every batch holds at least two).
        interleave: ``"proportional"`` or ``"round_robin"`` order of the datasets' batches in ``single`` mode.
        no_duplicates: keep any text from appearing twice in a batch (all fields, all datasets).
        small_dataset: ``single`` mode with a dataset smaller than ``batch_size``: ``"error"`` or ``"partial"``
            (logged; such a dataset gives one short batch per epoch).
        drop_last: drop batches shorter than ``batch_size``.
        val: validation STS sets, name -> source with ``sentence1``, ``sentence2``, ``score``, in order.
        test: test STS sets, like ``val``.
        val_split: split read for ``val`` sources.
        test_split: split read for ``test`` sources.
        data_root: folder for relative local sources; default ``$LIGHTEMBED_DATA``.
        tokenizer: tokenizer name or path, as for :func:`lightembed.backbones.load_tokenizer`.
        max_length: longest tokenized text; longer ones are truncated.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        num_workers: DataLoader worker processes.
        seed: seed of the batch order (fixed by seed and epoch).
        on_bad_row: ``"error"`` stops on an empty text, bad score or unknown NLI label, naming file and row;
            ``"skip"`` drops such rows and logs how many.
        instructions: training field -> instruction prefixed to its texts and excluded from pooling.
        eval_instruction: instruction prefixed to both sentences of validation/test STS pairs.
        cache_tokenization: tokenise each training dataset once and keep the tokens in
            ``<lightembed cache>/tokenized/`` (``$LIGHTEMBED_CACHE``), keyed by the source files' sha256, the source
            options, the tokenizer and ``max_length``: the next run with the same data reads them back. Map-style
            sources only; not with ``instructions``.
        weights: streaming only: name -> relative weight of the source in the draw (default equal).
        shuffle_buffer: streaming only: rows in each source's shuffle buffer.
        sts_score_range: inclusive bounds of the gold scores of the ``val``/``test`` STS sets (default 0-5); a score
            outside is a bad row. None accepts any finite score.
    """

    def __init__(
        self,
        train: dict[str, PairSource | str] | None = None,
        batching: BatchingMode = "single",
        interleave: Interleave = "proportional",
        no_duplicates: bool = True,
        small_dataset: SmallDataset = "error",
        drop_last: bool = False,
        val: dict[str, str] | None = None,
        test: dict[str, str] | None = None,
        val_split: str = "validation",
        test_split: str = "test",
        data_root: str | None = None,
        tokenizer: str = "packaged:all-MiniLM-L6-v2",
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        on_bad_row: Literal["error", "skip"] = "error",
        instructions: dict[str, str] | None = None,
        eval_instruction: str | None = None,
        cache_tokenization: bool = False,
        weights: dict[str, float] | None = None,
        shuffle_buffer: int = 10_000,
        sts_score_range: tuple[float, float] | None = STS_SCORE_RANGE,
    ) -> None:
        super().__init__()
        if batching not in ("single", "mixed"):
            raise ValueError(f"batching must be 'single' or 'mixed', got {batching!r}")
        if interleave not in ("proportional", "round_robin"):
            raise ValueError(f"interleave must be 'proportional' or 'round_robin', got {interleave!r}")
        if small_dataset not in ("error", "partial"):
            raise ValueError(f"small_dataset must be 'error' or 'partial', got {small_dataset!r}")
        if cache_tokenization and instructions:
            raise ValueError("cache_tokenization does not apply with instructions (their tokens are not cached)")
        self.save_hyperparameters()
        self.train_sources = {str(name): as_pair_source(spec) for name, spec in (train or {}).items()}
        self.batching = batching
        self.interleave = interleave
        self.no_duplicates = no_duplicates
        self.small_dataset = small_dataset
        self.drop_last = drop_last
        self.sts = STSSets(val, test, val_split, test_split, data_root, on_bad_row, score_range=sts_score_range)
        self.data_root = data_root
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.on_bad_row = on_bad_row
        self.instructions = dict(instructions or {})
        self.eval_instruction = eval_instruction
        self.cache_tokenization = cache_tokenization
        self.weights = dict(weights or {})
        self.shuffle_buffer = shuffle_buffer
        self.streaming = any(spec.streaming for spec in self.train_sources.values())
        self.train_dataset: MultiDataset | StreamingPairBatches | None = None
        self._train_hashes: list[np.ndarray] | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None

    # ------------------------------------------------------------------ names (the STS sets: STSEvaluation)
    @property
    def train_names(self) -> list[str]:
        """Names of the training datasets, in order."""
        return list(self.train_sources)

    # ------------------------------------------------------------------ loading
    def _same_fields(self, fields: Mapping[str, Sequence[str]]) -> bool:
        """Whether every batch can hold the datasets' fields; logs what is dropped in ``mixed`` mode otherwise."""
        if self.batching != "mixed" or len({tuple(f) for f in fields.values()}) <= 1:
            return True
        log.warning(
            "batching='mixed': the training datasets differ in fields %s and a batch needs one set of fields; "
            "dropping 'negative' from all of them (give every dataset negatives, e.g. with `lightembed "
            "mine-negatives`, to keep them)",
            dict(fields),
        )
        return False

    def _load_streaming(self) -> StreamingPairBatches:
        if self.cache_tokenization:
            raise ValueError(
                "cache_tokenization applies to map-style sources; streamed sources are tokenised per batch"
            )
        streams: dict[str, datasets.IterableDataset] = {}
        fields: dict[str, list[str]] = {}
        for name, spec in self.train_sources.items():
            if spec.streaming:
                streams[name] = stream_pairs(spec, self.data_root, self.on_bad_row, name)
                fields[name] = [f for f in spec.fields if f in TEXT_FIELDS]
            else:  # a small source beside streamed ones: read it, then iterate over it the same way
                ds = load_pairs(spec, self.data_root, self.on_bad_row, name)
                streams[name] = ds.to_iterable_dataset()
                fields[name] = ds.column_names
        if not self._same_fields(fields):
            streams = {n: ds.remove_columns("negative") if "negative" in fields[n] else ds for n, ds in streams.items()}
        log.info("streamed training datasets (%s batches): %s", self.batching, fields)
        return StreamingPairBatches(
            streams,
            self.batch_size,
            mode=self.batching,
            interleave=self.interleave,
            weights=self.weights,
            no_duplicates=self.no_duplicates,
            drop_last=self.drop_last,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
        )

    def _load_in_memory(self) -> MultiDataset:
        parts = {
            name: load_pairs(spec, self.data_root, self.on_bad_row, name) for name, spec in self.train_sources.items()
        }
        fields = {name: [f for f in TEXT_FIELDS if f in ds.column_names] for name, ds in parts.items()}
        if not self._same_fields(fields):
            parts = {
                n: ds.remove_columns("negative") if "negative" in ds.column_names else ds for n, ds in parts.items()
            }
        if self.cache_tokenization:
            parts = {
                name: tokenized(ds, name, self._cache_file(name, ds), self.tokenizer, self.max_length)
                for name, ds in parts.items()
            }
        dataset = MultiDataset(parts)
        log.info(
            "training datasets (%s batches%s): %s",
            self.batching,
            ", no duplicate texts" if self.no_duplicates else "",
            "; ".join(
                f"{n}: {len(ds)} rows ({', '.join(f)})"
                for n, ds, f in zip(parts, parts.values(), dataset.fields, strict=True)
            ),
        )
        return dataset

    def _cache_file(self, name: str, ds: datasets.Dataset) -> Path:
        return self.tokenization_cache_file(name, [f for f in TEXT_FIELDS if f in ds.column_names])

    def tokenization_cache_file(self, name: str, fields: Sequence[str]) -> Path:
        """Where the cached tokens of training dataset ``name`` live (see ``cache_tokenization``)."""
        return cache_file(
            name,
            self.train_sources[name],
            fields,
            self.data_root,
            self.tokenizer,
            self.tokenizer_name,
            self.max_length,
            mixed_fields=self.batching == "mixed",
        )

    def setup(self, stage: str | None = None) -> None:
        """Load the training datasets (``fit``) and the STS sets the stage needs; each is loaded once."""
        if stage in (None, "fit") and self.train_dataset is None and self.train_sources:
            self.train_dataset = self._load_streaming() if self.streaming else self._load_in_memory()
        self.sts.setup(stage)

    # ------------------------------------------------------------------ batching
    def _require_train(self) -> MultiDataset | StreamingPairBatches:
        if not self.train_sources:
            raise ValueError("MultiDatasetDataModule has no training source: set the `train` option")
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') before asking for the training data")
        return self.train_dataset

    def train_hashes(self) -> list[np.ndarray]:
        """Per training dataset, the ``(n_d, K_d)`` int64 hashes of each row's normalised texts (computed once)."""
        if self._train_hashes is None:
            ds = self._require_train()
            if not isinstance(ds, MultiDataset):
                raise ValueError("streamed training data has no precomputed hashes (duplicates are checked per batch)")
            self._train_hashes = [
                row_hashes([part.with_format("arrow")[f].to_pylist() for f in fields])
                for part, fields in zip(ds.parts, ds.fields, strict=True)
            ]
        return self._train_hashes

    def train_batch_sampler(self) -> MultiDatasetBatchSampler:
        """The batch sampler of the training loader: the per-dataset batches composed by ``batching`` and
        ``interleave`` (one per call; Lightning re-creates it under DDP)."""
        ds = self._require_train()
        if not isinstance(ds, MultiDataset):
            raise ValueError("streamed training data is batched by StreamingPairBatches, not by a batch sampler")
        return MultiDatasetBatchSampler(
            ds.sizes,
            self.batch_size,
            mode=self.batching,
            interleave=self.interleave,
            hashes=self.train_hashes() if self.no_duplicates else None,
            seed=self.seed,
            drop_last=self.drop_last,
            small_dataset=self.small_dataset,
            names=ds.names,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self._require_train()
        collator = PretokenizedPairCollator if self.cache_tokenization else PairCollator
        collate = collator(self.tokenizer, self.max_length, self.instructions)
        if isinstance(ds, StreamingPairBatches):  # the dataset yields whole batches
            return DataLoader(ds, batch_size=None, collate_fn=collate, num_workers=self.num_workers)
        return DataLoader(
            ds,
            batch_sampler=self.train_batch_sampler(),
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
