"""Several named pair/triplet datasets in one training run, batched one dataset at a time or mixed.

The "1B pairs" sentence-embedding recipe: contrastive quality grows with the batch size and with hard negatives;
batches built from one dataset at a time are topic-coherent (harder in-batch negatives), while training on at least
two datasets teaches the global structure. :class:`MultiDatasetDataModule` takes named sources, each a
:class:`PairSource` (or just a source string: a ``sentence1``/``sentence2`` pair file), and converts every one of
them to rows with the fields ``anchor``, ``positive`` and optionally ``negative``:

============== ========================================= ===========================================================
format         default ``columns`` (source -> field)      training rows
============== ========================================= ===========================================================
pairs          sentence1->anchor, sentence2->positive    anchor, positive (map a third column to ``negative`` for
                                                         triplets)
triplets       anchor, positive, negative                anchor, positive, negative
nli_triplets   premise, hypothesis, label                premise, entailed hypothesis, contradicting hypothesis
nli_pairs      premise, hypothesis, label                premise, entailed hypothesis
============== ========================================= ===========================================================

Before the conversion a source can be filtered by column values (``where: {label: 1}`` keeps MRPC paraphrases,
``where: {label: entailment}`` SICK entailment pairs) and by a score (``min_score: 4.0`` keeps STS-B pairs scored
4 or more), then cut to its first ``limit`` rows. A source whose mapped columns are missing, or that is empty after
filtering, is an error naming it.

Batches come from :class:`~lightembed.data.samplers.MultiDatasetBatchSampler` (``batching: single | mixed``,
``interleave``, ``no_duplicates``) and are tokenised by :class:`~lightembed.data.collators.PairCollator`, whose
``*_ids`` mark identical texts so the duplicate-aware in-batch losses never treat a repeated text as a negative.
Validation and test sets are STS sets, as in :class:`~lightembed.data.pairs.PairDataModule`.

Large corpora: a source with ``streaming: true`` is read lazily (``datasets`` streaming, split between DDP ranks with
``split_dataset_by_node``); then all sources are iterated and batched by :class:`StreamingPairBatches` (shuffle
buffer, no ``__len__``: set ``max_steps``). ``cache_tokenization: true`` tokenises each in-memory dataset once and
keeps the tokens on disk, so the next run with the same files, options and tokenizer skips tokenisation.

Every batch is tokenised by one collator call, so all rows of a batch need the same fields: in ``mixed`` mode,
datasets with and without ``negative`` cannot share batches, and the negatives are dropped (with a warning) unless
every dataset has them. In ``single`` mode each dataset keeps its own fields.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightembed.data.collators import TEXT_FIELDS, PairCollator, normalize_text
from lightembed.data.nli import nli_to_pairs, nli_to_triplets
from lightembed.data.pairs import PairDataModule
from lightembed.data.samplers import (
    BatchingMode,
    Interleave,
    MultiDatasetBatchSampler,
    SmallDataset,
    row_hashes,
)
from lightembed.data.sources import load_source

log = logging.getLogger(__name__)

PairFormat = Literal["pairs", "triplets", "nli_triplets", "nli_pairs"]

FORMAT_COLUMNS: dict[str, dict[str, str]] = {
    "pairs": {"sentence1": "anchor", "sentence2": "positive"},
    "triplets": {"anchor": "anchor", "positive": "positive", "negative": "negative"},
    "nli_triplets": {"premise": "premise", "hypothesis": "hypothesis", "label": "label"},
    "nli_pairs": {"premise": "premise", "hypothesis": "hypothesis", "label": "label"},
}
"""Default source column -> field of each format."""

NLI_FIELDS = ("premise", "hypothesis", "label")


@dataclass
class PairSource:
    """One named training source of :class:`MultiDatasetDataModule` (see the module docstring).

    Args:
        source: local file/glob/directory (relative to the data root) or Hub id ``owner/name[:config]``.
        format: ``pairs``, ``triplets``, ``nli_triplets`` or ``nli_pairs``.
        columns: source column -> field; default per format. ``pairs``/``triplets`` map to ``anchor``,
            ``positive`` and optionally ``negative``; ``nli_*`` to ``premise``, ``hypothesis``, ``label``.
        split: split read from a Hub id or a per-split directory.
        where: keep rows whose column equals the value (or is one of a list of values), e.g. ``{label: 1}``.
        min_score: keep rows whose ``score_column`` is at least this.
        score_column: the source column ``min_score`` reads.
        limit: keep the first ``limit`` rows (after filtering and conversion).
        streaming: read the source lazily (``datasets`` streaming, for corpora larger than memory); see
            :class:`StreamingPairBatches` for what changes.
    """

    source: str
    format: PairFormat = "pairs"
    columns: dict[str, str] | None = None
    split: str = "train"
    where: dict[str, Any] | None = None
    min_score: float | None = None
    score_column: str = "score"
    limit: int | None = None
    streaming: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMAT_COLUMNS:
            raise ValueError(f"format must be one of {list(FORMAT_COLUMNS)}, got {self.format!r}")
        columns = self.mapping
        fields = list(columns.values())
        if len(set(fields)) != len(fields):
            raise ValueError(f"columns map two source columns to the same field: {columns}")
        if self.format.startswith("nli_"):
            if sorted(fields) != sorted(NLI_FIELDS):
                raise ValueError(f"columns for format {self.format!r} must map to {list(NLI_FIELDS)}; got {columns}")
        else:
            unknown = sorted(set(fields) - set(TEXT_FIELDS))
            if unknown or not {"anchor", "positive"} <= set(fields):
                raise ValueError(
                    f"columns for format {self.format!r} must map source columns to 'anchor', 'positive' and "
                    f"optionally 'negative'; got {columns}"
                )
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be positive, got {self.limit}")
        if self.streaming and self.format == "nli_triplets":
            raise ValueError(
                "format 'nli_triplets' groups the hypotheses of each premise over the whole source and cannot "
                "stream; use 'nli_pairs', or convert the source to triplets first"
            )

    @property
    def fields(self) -> list[str]:
        """The training fields its rows will have."""
        if self.format.startswith("nli_"):
            return ["anchor", "positive", "negative"] if self.format == "nli_triplets" else ["anchor", "positive"]
        return [f for f in TEXT_FIELDS if f in self.mapping.values()]

    @property
    def mapping(self) -> dict[str, str]:
        """Source column -> field, the default of the format unless ``columns`` is set."""
        return dict(FORMAT_COLUMNS[self.format] if self.columns is None else self.columns)

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in asdict(self).items() if v is not None)


def as_pair_source(spec: PairSource | Mapping[str, Any] | str) -> PairSource:
    """A :class:`PairSource` from itself, a dict of its fields, or a source string (a ``pairs`` file)."""
    if isinstance(spec, PairSource):
        return spec
    if isinstance(spec, str):
        return PairSource(source=spec)
    if isinstance(spec, Mapping):
        return PairSource(**spec)
    raise TypeError(f"a training source is a string, a dict or a PairSource, got {type(spec).__name__}")


def _keep_rows(ds: datasets.Dataset, column: str, wanted: Any) -> np.ndarray:
    """Boolean mask of the rows whose ``column`` equals ``wanted`` (or one of a list of values)."""
    values = list(wanted) if isinstance(wanted, list | tuple | set) else [wanted]
    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):  # Hub label columns: allow names as well as ids
        values = [feature.str2int(v) if isinstance(v, str) else v for v in values]
    table_column = ds.with_format("arrow")[column]
    try:
        value_set = pa.array(values).cast(table_column.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
        raise ValueError(
            f"where {{{column}: {wanted!r}}}: the value does not fit column type {table_column.type}"
        ) from err
    mask = pc.fill_null(pc.is_in(table_column, value_set=value_set), False)
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def load_pairs(
    spec: PairSource | Mapping[str, Any] | str,
    data_root: str | None = None,
    on_bad_row: Literal["error", "skip"] = "error",
    name: str | None = None,
) -> datasets.Dataset:
    """Load one training source as rows ``anchor``, ``positive`` [, ``negative``] (string columns, in that order).

    Raises:
        ValueError: mapped columns missing from the source, an empty text, a bad score or NLI label (with
            ``on_bad_row="error"``), a ``where`` value that does not fit its column, or no row left after filtering;
            the message names the source.
    """
    spec = as_pair_source(spec)
    label = f"training source {name!r} ({spec.source})" if name else f"training source {spec.source!r}"
    mapping = spec.mapping
    where = dict(spec.where or {})
    extra = [*where, *([spec.score_column] if spec.min_score is not None else [])]
    columns = [*mapping, *(c for c in dict.fromkeys(extra) if c not in mapping)]
    text_columns = [src for src, dst in mapping.items() if dst != "label"]
    try:
        ds = load_source(
            spec.source,
            columns,
            spec.split,
            data_root,
            text_columns=text_columns,
            score_column=spec.score_column if spec.min_score is not None else None,
            on_bad_row=on_bad_row,
        )
    except (ValueError, FileNotFoundError) as err:
        err.add_note(f"while loading {label}: {spec.describe()}; map its columns with `columns`")
        raise
    read = len(ds)
    steps = []
    keep = np.ones(read, dtype=bool)
    for column, wanted in where.items():
        try:
            keep &= _keep_rows(ds, column, wanted)
        except ValueError as err:
            raise ValueError(f"{label}: {err}") from err
        steps.append(f"where {column} = {wanted!r}")
    if spec.min_score is not None:
        scores = np.asarray(ds.with_format("arrow")[spec.score_column].to_numpy(), dtype=np.float64)
        keep &= scores >= spec.min_score
        steps.append(f"{spec.score_column} >= {spec.min_score}")
    if not keep.all():
        ds = ds.select(np.flatnonzero(keep))
    ds = ds.select_columns(list(mapping)).rename_columns({s: d for s, d in mapping.items() if s != d})
    try:
        if spec.format == "nli_triplets":
            ds = nli_to_triplets(ds, on_bad_row=on_bad_row)
            steps.append("NLI triplets (entailment x contradiction per premise)")
        elif spec.format == "nli_pairs":
            ds = nli_to_pairs(ds, {"entailment": 1.0}, on_bad_row=on_bad_row).remove_columns("score")
            steps.append("NLI entailment pairs")
    except ValueError as err:
        raise ValueError(f"{label}: {err}") from err
    ds = ds.select_columns([f for f in TEXT_FIELDS if f in ds.column_names])
    if spec.limit is not None and len(ds) > spec.limit:
        ds = ds.select(range(spec.limit))
    if len(ds) == 0:
        after = f" after {'; '.join(steps)}" if steps else ""
        raise ValueError(f"{label} is empty{after} ({read} rows read); loosen the filters or check the file")
    return ds


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


# ------------------------------------------------------------------------------------------------ streaming


def _is_entailment(label: Any) -> bool:
    if isinstance(label, str):
        return label.strip().lower() == "entailment"
    return label == 0  # Hugging Face order: 0 = entailment


def stream_pairs(
    spec: PairSource | Mapping[str, Any] | str,
    data_root: str | None = None,
    on_bad_row: Literal["error", "skip"] = "error",
    name: str | None = None,
) -> datasets.IterableDataset:
    """A training source read lazily (``datasets`` streaming) as rows ``anchor``, ``positive`` [, ``negative``].

    The same options as :func:`load_pairs` except ``nli_triplets`` (which needs the whole source). Columns are
    checked on the first row; empty texts and bad scores raise (``on_bad_row="error"``) or are skipped when the rows
    are read.
    """
    from lightembed.data.sources import resolve_source

    spec = as_pair_source(spec)
    label = f"training source {name!r} ({spec.source})" if name else f"training source {spec.source!r}"
    if spec.format == "nli_triplets":
        raise ValueError(f"{label}: format 'nli_triplets' cannot stream; use 'nli_pairs'")
    resolved = resolve_source(spec.source, spec.split, data_root)
    if resolved.is_local:
        files = [str(f) for f in resolved.files]
        ds = datasets.load_dataset(resolved.builder, data_files=files, split="train", streaming=True)
    else:
        ds = datasets.load_dataset(resolved.hub_id, resolved.hub_config, split=spec.split, streaming=True)
    mapping = spec.mapping
    where = dict(spec.where or {})
    needed = [*mapping, *where, *([spec.score_column] if spec.min_score is not None else [])]
    first = next(iter(ds.take(1)), None)
    if first is None:
        raise ValueError(f"{label} is empty ({resolved.describe()})")
    missing = [c for c in dict.fromkeys(needed) if c not in first]
    if missing:
        raise ValueError(
            f"{resolved.describe()}: missing column(s) {missing}; expected columns {list(dict.fromkeys(needed))}, "
            f"found {list(first)} (while loading {label}; map its columns with `columns`)"
        )
    wanted = {c: set(v) if isinstance(v, list | tuple | set) else {v} for c, v in where.items()}
    text_columns = [src for src, dst in mapping.items() if dst != "label"]

    def keep(row: dict[str, Any]) -> bool:
        if any(row[c] not in values for c, values in wanted.items()):
            return False
        for column in text_columns:
            text = row[column]
            if not isinstance(text, str) or not text.strip():
                if on_bad_row == "error":
                    raise ValueError(f"{label}: empty or missing text in column {column!r}: {row}")
                return False
        if spec.min_score is not None:
            score = row[spec.score_column]
            if not isinstance(score, int | float) or score != score:
                if on_bad_row == "error":
                    raise ValueError(f"{label}: missing or non-finite value in score column {spec.score_column!r}")
                return False
            if score < spec.min_score:
                return False
        if spec.format == "nli_pairs":
            return _is_entailment(row[next(s for s, d in mapping.items() if d == "label")])
        return True

    def convert(row: dict[str, Any]) -> dict[str, str]:
        fields = {dst: row[src] for src, dst in mapping.items()}
        if spec.format == "nli_pairs":
            return {"anchor": fields["premise"], "positive": fields["hypothesis"]}
        return {f: fields[f] for f in TEXT_FIELDS if f in fields}

    ds = ds.filter(keep).map(convert, remove_columns=list(first))
    return ds.take(spec.limit) if spec.limit is not None else ds


class StreamingPairBatches(IterableDataset):
    """Batches of rows (lists of dicts) drawn from streamed sources, for corpora that do not fit in memory.

    What differs from the map-style path (:class:`~lightembed.data.samplers.MultiDatasetBatchSampler`):

    - order: each source is shuffled with a buffer of ``shuffle_buffer`` rows (``datasets``'
      ``IterableDataset.shuffle``), seeded by ``(seed, epoch)``; the epoch advances at every new iteration (or is set
      with :meth:`set_epoch`).
    - ``single``: each batch is filled from one source, the sources taken round-robin (the epoch ends when one runs
      out: equal shares) or at random by ``weights`` (until all run out). ``mixed``: the first two rows of a batch
      come from two different sources, the others from sources drawn by ``weights``; the epoch ends when fewer than
      two sources are left.
    - no duplicates: a row that would repeat a normalised text of the batch waits for the source's next batch; a
      source with ``8 * batch_size`` rows waiting ends for the epoch (logged), so memory stays bounded.
    - distributed: each source is split between ranks with ``datasets.distributed.split_dataset_by_node``. The
      sizes are unknown, so the ranks may not get the same number of batches: set ``max_steps`` (below one epoch)
      under DDP, and in any case (the schedulers need the number of steps).

    Args:
        streams: name -> iterable dataset of rows with the fields ``anchor``, ``positive`` [, ``negative``].
        batch_size: rows per batch.
        mode: ``"single"`` or ``"mixed"``.
        interleave: ``"round_robin"`` or ``"proportional"`` (random by ``weights``) in ``single`` mode.
        weights: name -> relative weight of the source (default equal).
        no_duplicates: keep any text from appearing twice in a batch.
        drop_last: drop batches shorter than ``batch_size``.
        seed: base seed.
        shuffle_buffer: rows in each source's shuffle buffer (0: no shuffle).
        rank, world_size: this rank and the number of ranks; default from ``torch.distributed`` when initialised.
    """

    def __init__(
        self,
        streams: Mapping[str, datasets.IterableDataset],
        batch_size: int,
        mode: BatchingMode = "single",
        interleave: Interleave = "round_robin",
        weights: Mapping[str, float] | None = None,
        no_duplicates: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 10_000,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if not streams:
            raise ValueError("StreamingPairBatches needs at least one source")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if mode == "mixed" and len(streams) < 2:
            raise ValueError(f"mode 'mixed' needs at least two datasets, got {list(streams)}")
        self.streams = dict(streams)
        self.batch_size = batch_size
        self.mode = mode
        self.interleave = interleave
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.streams))
        if unknown or any(w <= 0 for w in weights.values()):
            raise ValueError(f"weights must be positive and name known sources {list(self.streams)}, got {weights}")
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.streams}
        self.no_duplicates = no_duplicates
        self.drop_last = drop_last
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world_size = world_size or (torch.distributed.get_world_size() if initialised else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if initialised else 0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration (each iteration then moves on to the next epoch)."""
        self.epoch = epoch

    def _prepared(self, name: str, epoch: int) -> datasets.IterableDataset:
        from datasets.distributed import split_dataset_by_node

        ds = self.streams[name]
        if self.shuffle_buffer:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            ds.set_epoch(epoch)
        if self.world_size > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        return ds

    def __iter__(self) -> Iterator[list[dict[str, str]]]:
        epoch = self.epoch
        self.epoch += 1  # Lightning sets no epoch on an iterable dataset: each iteration is the next epoch
        rng = np.random.default_rng([self.seed, epoch])
        sources = {
            name: _Source(name, iter(self._prepared(name, epoch)), self.no_duplicates, 8 * self.batch_size)
            for name in self.streams
        }
        if self.mode == "single":
            yield from self._single(sources, rng)
        else:
            yield from self._mixed(sources, rng)

    def _pick(self, alive: list[str], rng: np.random.Generator) -> str:
        p = np.array([self.weights[n] for n in alive])
        return alive[int(rng.choice(len(alive), p=p / p.sum()))]

    def _single(self, sources: dict[str, _Source], rng: np.random.Generator) -> Iterator[list[dict[str, str]]]:
        alive = list(sources)
        turn = 0
        while alive:
            if self.interleave == "round_robin":
                name = alive[turn % len(alive)]
                turn += 1
            else:
                name = self._pick(alive, rng)
            batch = _StreamBatch(self.no_duplicates)
            while len(batch.rows) < self.batch_size and sources[name].draw(batch):
                pass
            if len(batch.rows) == self.batch_size or (batch.rows and not self.drop_last):
                yield batch.rows
            if len(batch.rows) < self.batch_size:  # the source ran out
                if self.interleave == "round_robin":
                    return
                alive.remove(name)

    def _mixed(self, sources: dict[str, _Source], rng: np.random.Generator) -> Iterator[list[dict[str, str]]]:
        alive = list(sources)
        while len(alive) >= 2:
            batch = _StreamBatch(self.no_duplicates)
            first = self._pick(alive, rng)
            second = self._pick([n for n in alive if n != first], rng)
            used: set[str] = set()
            for name in (first, second):
                if sources[name].draw(batch):
                    used.add(name)
                else:
                    alive.remove(name)
            while len(batch.rows) < self.batch_size and len(alive) >= 2:
                name = self._pick(alive, rng)
                if sources[name].draw(batch):
                    used.add(name)
                else:
                    alive.remove(name)
            full = len(batch.rows) == self.batch_size
            if len(used) >= 2 and (full or not self.drop_last):
                yield batch.rows


class _StreamBatch:
    """Rows of a streamed batch and the normalised texts it holds."""

    def __init__(self, no_duplicates: bool) -> None:
        self.rows: list[dict[str, str]] = []
        self.texts: set[str] | None = set() if no_duplicates else None

    def fits(self, keys: list[str]) -> bool:
        return self.texts is None or not any(k in self.texts for k in keys)

    def add(self, row: dict[str, str], keys: list[str]) -> None:
        self.rows.append(row)
        if self.texts is not None:
            self.texts.update(keys)


class _Source:
    """One streamed source: its iterator and the rows waiting because they would repeat a text of a batch (at most
    ``max_waiting``: a source that cannot fill a batch within that many rows ends for the epoch)."""

    def __init__(self, name: str, rows: Iterator[dict[str, str]], no_duplicates: bool, max_waiting: int) -> None:
        self.name = name
        self.rows = rows
        self.no_duplicates = no_duplicates
        self.max_waiting = max_waiting
        self.waiting: list[tuple[dict[str, str], list[str]]] = []

    def _keys(self, row: dict[str, str]) -> list[str]:
        return [normalize_text(row[f]) for f in TEXT_FIELDS if f in row] if self.no_duplicates else []

    def draw(self, batch: _StreamBatch) -> bool:
        """Add the next row that fits to ``batch``; False when the source has none left."""
        for i, (row, keys) in enumerate(self.waiting):
            if batch.fits(keys):
                del self.waiting[i]
                batch.add(row, keys)
                return True
        if len(self.waiting) < self.max_waiting:
            for row in self.rows:
                keys = self._keys(row)
                if batch.fits(keys):
                    batch.add(row, keys)
                    return True
                self.waiting.append((row, keys))
                if len(self.waiting) >= self.max_waiting:
                    break
            else:
                return False  # the source ran out
        log.warning(
            "streamed source %r: %d rows wait because they would repeat a text of the batch; it ends for this "
            "epoch (too many duplicates for no_duplicates at this batch size)",
            self.name,
            len(self.waiting),
        )
        return False


# ------------------------------------------------------------------------------------------------ cached tokens

TOKENIZATION_CACHE_VERSION = 1
"""Part of the tokenisation cache key; bump it when the cached columns change."""


class PretokenizedPairCollator(PairCollator):
    """:class:`~lightembed.data.collators.PairCollator` for rows that carry their tokens (``anchor.input_ids``, ...,
    written by :meth:`MultiDatasetDataModule` with ``cache_tokenization``): the tokens are padded instead of the texts
    tokenised again; everything else (checks, ``*_ids``, the batch format) is PairCollator's. A text without cached
    tokens, or a field with an instruction, is tokenised as usual."""

    def __init__(self, tokenizer, max_length: int = 128, instructions: Mapping[str, str] | None = None) -> None:
        super().__init__(tokenizer, max_length, instructions)
        self._tokens: dict[str, dict[str, list[int]]] = {}
        if hasattr(tokenizer, "deprecation_warnings"):  # padding token lists with a fast tokenizer is what we want
            tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        self._tokens = {}
        plain = []
        for row in rows:
            for f in TEXT_FIELDS:
                features = {k.split(".", 1)[1]: v for k, v in row.items() if k.startswith(f"{f}.")}
                if features and row.get(f) is not None:
                    self._tokens[row[f]] = features  # equal texts have equal tokens
            plain.append({k: v for k, v in row.items() if "." not in k})
        try:
            return super().__call__(plain)
        finally:
            self._tokens = {}

    def encode_texts(self, texts: list[str], instruction: str | None = None) -> dict[str, torch.Tensor]:
        if instruction or not texts or any(t not in self._tokens for t in texts):
            return super().encode_texts(texts, instruction)
        padded = self.tokenizer.pad([self._tokens[t] for t in texts], padding="longest", return_tensors="pt")
        return dict(padded)  # input_ids, attention_mask[, token_type_ids]: (B, L)


def _tokenize_fields(batch: dict[str, list], tokenizer, max_length: int, fields: list[str]) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in fields:
        encoded = tokenizer(batch[f], truncation=True, max_length=max_length)
        for key, values in encoded.items():
            if key != "attention_mask":  # rebuilt by padding
                out[f"{f}.{key}"] = values
    return out


class MultiDatasetDataModule(PairDataModule):
    """Several named pair/triplet datasets for contrastive training; STS sets for validation and test.

    Args:
        train: name -> :class:`PairSource` (or a dict of its fields, or a source string read as ``pairs``), in
            order; e.g. ``{snli: {source: nli/snli/validation.jsonl, format: nli_triplets}, mrpc: {...}}``.
        batching: ``"single"`` (every batch from one dataset) or ``"mixed"`` (every batch holds at least two).
        interleave: ``"proportional"`` or ``"round_robin"`` order of the datasets' batches in ``single`` mode.
        no_duplicates: keep any text from appearing twice in a batch (all fields, all datasets).
        small_dataset: ``single`` mode with a dataset smaller than ``batch_size``: ``"error"`` or ``"partial"``
            (logged; such a dataset gives one short batch per epoch).
        drop_last: drop batches shorter than ``batch_size``.
        batch_size: training batch size.
        cache_tokenization: tokenise each training dataset once and keep the tokens in
            ``<lightembed cache>/tokenized/`` (``$LIGHTEMBED_CACHE``), keyed by the source files' sha256, the source
            options, the tokenizer and ``max_length``: the next run with the same data reads them back. Map-style
            sources only; not with ``instructions``.
        weights: streaming only: name -> relative weight of the source in the draw (default equal).
        shuffle_buffer: streaming only: rows in each source's shuffle buffer.
        (the other arguments: as in :class:`~lightembed.data.pairs.PairDataModule`)
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
    ) -> None:
        super().__init__(
            train=None,
            val=val,
            test=test,
            val_split=val_split,
            test_split=test_split,
            data_root=data_root,
            tokenizer=tokenizer,
            max_length=max_length,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            seed=seed,
            on_bad_row=on_bad_row,
            instructions=instructions,
            eval_instruction=eval_instruction,
        )
        self.save_hyperparameters()
        # options of PairDataModule's single training source that this class does not take
        for key in ("train_format", "columns", "train_split", "length_grouping", "score_range", "nli_scores"):
            self._hparams.pop(key, None)
            self._hparams_initial.pop(key, None)
        if batching not in ("single", "mixed"):
            raise ValueError(f"batching must be 'single' or 'mixed', got {batching!r}")
        if interleave not in ("proportional", "round_robin"):
            raise ValueError(f"interleave must be 'proportional' or 'round_robin', got {interleave!r}")
        if small_dataset not in ("error", "partial"):
            raise ValueError(f"small_dataset must be 'error' or 'partial', got {small_dataset!r}")
        self.train_sources = {str(name): as_pair_source(spec) for name, spec in (train or {}).items()}
        self.batching = batching
        self.interleave = interleave
        self.no_duplicates = no_duplicates
        self.small_dataset = small_dataset
        self.drop_last = drop_last
        self.weights = dict(weights or {})
        self.shuffle_buffer = shuffle_buffer
        self.cache_tokenization = cache_tokenization
        if cache_tokenization and self.instructions:
            raise ValueError("cache_tokenization does not apply with instructions (their tokens are not cached)")
        self.streaming = any(spec.streaming for spec in self.train_sources.values())
        self.train_dataset: MultiDataset | StreamingPairBatches | None = None  # type: ignore[assignment]
        self._train_hashes: list[np.ndarray] | None = None

    @property
    def train_names(self) -> list[str]:
        """Names of the training datasets, in order."""
        return list(self.train_sources)

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
                fields[name] = spec.fields
            else:  # a small source beside streamed ones: read it, then iterate over it the same way
                ds = load_pairs(spec, self.data_root, self.on_bad_row, name)
                streams[name] = ds.to_iterable_dataset()
                fields[name] = ds.column_names
        if self.batching == "mixed" and len({tuple(f) for f in fields.values()}) > 1:
            log.warning(
                "batching='mixed': the training datasets differ in fields %s; dropping 'negative' from all of them",
                fields,
            )
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

    def _load_train(self) -> MultiDataset | StreamingPairBatches:  # type: ignore[override]
        if self.streaming:
            return self._load_streaming()
        parts = {
            name: load_pairs(spec, self.data_root, self.on_bad_row, name) for name, spec in self.train_sources.items()
        }
        fields = {name: [f for f in TEXT_FIELDS if f in ds.column_names] for name, ds in parts.items()}
        if self.batching == "mixed" and len({tuple(f) for f in fields.values()}) > 1:
            log.warning(
                "batching='mixed': the training datasets differ in fields %s and a batch needs one set of fields; "
                "dropping 'negative' from all of them (give every dataset negatives, e.g. with `lightembed "
                "mine-negatives`, to keep them)",
                fields,
            )
            parts = {
                n: ds.remove_columns("negative") if "negative" in ds.column_names else ds for n, ds in parts.items()
            }
        if self.cache_tokenization:
            parts = {name: self._tokenized(name, ds) for name, ds in parts.items()}
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

    def tokenization_cache_file(self, name: str, fields: Sequence[str]) -> Path:
        """Where the cached tokens of training dataset ``name`` live (see ``cache_tokenization``)."""
        from lightembed.data.sources import source_fingerprint
        from lightembed.packaged import cache_dir

        spec = self.train_sources[name]
        key = {
            "version": TOKENIZATION_CACHE_VERSION,
            "source": source_fingerprint(spec.source, spec.split, self.data_root),
            "spec": asdict(spec),
            "fields": list(fields),
            "tokenizer": self.tokenizer_name,
            "tokenizer_class": type(self.tokenizer).__name__,
            "vocab": len(self.tokenizer),
            "max_length": self.max_length,
            "mixed_fields": self.batching == "mixed",
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return cache_dir() / "tokenized" / f"{name}-{digest[:20]}.arrow"

    def _tokenized(self, name: str, ds: datasets.Dataset) -> datasets.Dataset:
        fields = [f for f in TEXT_FIELDS if f in ds.column_names]
        path = self.tokenization_cache_file(name, fields)
        path.parent.mkdir(parents=True, exist_ok=True)
        cached = path.is_file()
        ds = ds.map(
            _tokenize_fields,
            batched=True,
            batch_size=1000,
            fn_kwargs={"tokenizer": self.tokenizer, "max_length": self.max_length, "fields": fields},
            cache_file_name=str(path),
            load_from_cache_file=True,
            new_fingerprint=path.stem,
            desc=f"tokenizing {name}",
        )
        log.info("%s tokens of %r: %s", "read cached" if cached else "cached", name, path)
        return ds

    def setup(self, stage: str | None = None) -> None:
        """Load the training datasets (``fit``) and the STS sets the stage needs; each is loaded once."""
        if stage in (None, "fit") and self.train_dataset is None and self.train_sources:
            self.train_dataset = self._load_train()
        super().setup(stage)

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

    def _require_train(self) -> MultiDataset | StreamingPairBatches:
        if not self.train_sources:
            raise ValueError("MultiDatasetDataModule has no training source: set the `train` option")
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') before asking for the training data")
        return self.train_dataset

    def train_batch_sampler(self) -> MultiDatasetBatchSampler:
        """The batch sampler of the training loader (one per call; Lightning re-creates it under DDP)."""
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

    def train_lengths(self) -> np.ndarray:
        raise NotImplementedError("MultiDatasetDataModule batches by dataset, not by length")

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
