"""Training batches drawn from streamed sources, for corpora that do not fit in memory.

The streamed counterpart of :class:`~lightembed.data.samplers.MultiDatasetBatchSampler`: the sources come from
:func:`~lightembed.data.pair_sources.stream_pairs` (the same checks and formats as the in-memory path) and the batches
follow the same no-duplicates rule (:mod:`lightembed.data.no_duplicates`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping

import datasets
import numpy as np
import torch
from torch.utils.data import IterableDataset

from lightembed.data.collators import text_hashes
from lightembed.data.formats import TEXT_FIELDS
from lightembed.data.no_duplicates import Batch, RowQueue, SetMarks, StreamedTexts
from lightembed.data.samplers import BatchingMode, Interleave

log = logging.getLogger(__name__)


class StreamingPairBatches(IterableDataset):
    """Batches of rows (lists of dicts) drawn from streamed sources, for corpora that do not fit in memory.

    What differs from the in-memory path (:class:`~lightembed.data.samplers.MultiDatasetBatchSampler`):

    - order: each source is shuffled with a buffer of ``shuffle_buffer`` rows (``datasets``'
      ``IterableDataset.shuffle``), seeded by ``(seed, epoch)``; the epoch advances at every new iteration (or is set
      with :meth:`set_epoch`).
    - ``single``: each batch is filled from one source, the sources taken round-robin (the epoch ends when one runs
      out: equal shares) or at random by ``weights`` (until all run out). ``mixed``: the first two rows of a batch
      come from two different sources, the others from sources drawn by ``weights``; the epoch ends when fewer than
      two sources are left.
    - no duplicates: the same rule and greedy fill (:mod:`lightembed.data.no_duplicates`), row by row since the
      texts are not known in advance: a row that would repeat a text of the batch waits for the source's next batch;
      a source with ``8 * batch_size`` rows waiting ends for the epoch (logged), so memory stays bounded.
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
        rows = _Rows(self.no_duplicates)
        sources = {
            name: _Source(name, iter(self._prepared(name, epoch)), rows, 8 * self.batch_size) for name in self.streams
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
        rows = next(iter(sources.values())).registry
        while alive:
            if self.interleave == "round_robin":
                name = alive[turn % len(alive)]
                turn += 1
            else:
                name = self._pick(alive, rng)
            batch = rows.batch()
            sources[name].fill(batch, self.batch_size)
            size = batch.size
            full = size == self.batch_size
            batch_rows = rows.close(batch)
            if full or (size and not self.drop_last):
                yield batch_rows
            if not full:  # the source ran out
                if self.interleave == "round_robin":
                    return
                alive.remove(name)

    def _mixed(self, sources: dict[str, _Source], rng: np.random.Generator) -> Iterator[list[dict[str, str]]]:
        alive = list(sources)
        rows = next(iter(sources.values())).registry
        while len(alive) >= 2:
            batch = rows.batch()
            first = self._pick(alive, rng)
            second = self._pick([n for n in alive if n != first], rng)
            used: set[str] = set()
            for name in (first, second):
                if sources[name].draw(batch):
                    used.add(name)
                else:
                    alive.remove(name)
            while batch.size < self.batch_size and len(alive) >= 2:
                name = self._pick(alive, rng)
                if sources[name].draw(batch):
                    used.add(name)
                else:
                    alive.remove(name)
            full = batch.size == self.batch_size
            batch_rows = rows.close(batch)
            if len(used) >= 2 and (full or not self.drop_last):
                yield batch_rows


class _Rows:
    """The rows read in one epoch, numbered across all sources (a batch may mix sources), until their batch closes."""

    def __init__(self, no_duplicates: bool) -> None:
        self.texts = StreamedTexts() if no_duplicates else None
        self.marks = SetMarks() if no_duplicates else None
        self.store: dict[int, dict[str, str]] = {}
        self.count = 0

    def add(self, row: dict[str, str]) -> int:
        number = self.count
        self.count += 1
        self.store[number] = row
        if self.texts is not None:
            self.texts.add(number, text_hashes([row[f] for f in TEXT_FIELDS if f in row]))
        return number

    def batch(self) -> Batch:
        return Batch(self.marks)

    def close(self, batch: Batch) -> list[dict[str, str]]:
        numbers = batch.close()
        if self.texts is not None:
            self.texts.forget(numbers)
        return [self.store.pop(n) for n in numbers.tolist()]


class _Source:
    """One streamed source: its rows in a :class:`~lightembed.data.no_duplicates.RowQueue` (at most ``max_waiting``
    rows wait: a source that cannot fill a batch within that many rows ends for the epoch)."""

    def __init__(self, name: str, rows: Iterator[dict[str, str]], registry: _Rows, max_waiting: int) -> None:
        self.name = name
        self.rows = rows
        self.registry = registry
        self.queue = RowQueue(registry.texts, pull=self._pull, max_waiting=max_waiting)

    def _pull(self, count: int) -> np.ndarray:
        numbers = [self.registry.add(row) for row in itertools.islice(self.rows, count)]
        return np.asarray(numbers, dtype=np.int64)

    def _ended(self) -> bool:
        if self.queue.waiting_full:
            log.warning(
                "streamed source %r: %d rows wait because they would repeat a text of the batch; it ends for this "
                "epoch (too many duplicates for no_duplicates at this batch size)",
                self.name,
                len(self.queue.pending),
            )
        return False

    def draw(self, batch: Batch) -> bool:
        """Add the next row that fits to ``batch``; False when the source has none left."""
        return bool(self.queue.take(batch, 1)) or self._ended()

    def fill(self, batch: Batch, size: int) -> None:
        """Fill ``batch`` up to ``size`` rows from this source alone."""
        self.queue.take(batch, size - batch.size)
        if batch.size < size:
            self._ended()
