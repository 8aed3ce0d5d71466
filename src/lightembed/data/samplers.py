"""Batch samplers: group rows of similar length so dynamic padding wastes little compute.

:class:`LengthGroupedBatchSampler` follows the "mega-batch" scheme of Hugging Face's ``LengthGroupedSampler``:
shuffle the indices, split them into mega-batches of ``batch_size * mega_batch_mult``, sort each mega-batch by length
(longest first), cut it into batches and shuffle the order of the batches. Batches hold texts of similar length
while their content and order stay random.

Epochs and distributed training: the index order comes from an inner ``sampler`` (by default a seeded
:class:`EpochRandomSampler`). Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler`` each epoch, and
under DDP it re-creates this batch sampler with a ``DistributedSampler`` passed as ``sampler``, so each rank groups
its own shard and the epoch still changes the order.

:class:`MultiDatasetBatchSampler` builds batches over several datasets: every batch from one dataset (``"single"``)
or every batch mixing at least two (``"mixed"``), optionally with no text twice in a batch (hash-based, numpy); it
splits the epoch's batches between DDP ranks itself. :func:`row_hashes` computes the text hashes it needs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import BatchSampler, RandomSampler, Sampler, SequentialSampler

from lightembed.data.collators import text_hashes

log = logging.getLogger(__name__)


class EpochRandomSampler(RandomSampler):
    """A random permutation of ``range(num_samples)`` fixed by ``(seed, epoch)``; advance it with ``set_epoch``.

    The permutation is torch's ``randperm`` with a generator seeded by ``seed + epoch``: the order torch's
    ``DistributedSampler`` gives on one device, and the order sentence-transformers' trainer gives in its first epoch
    with the same seed. So a lightembed run and a peer run with the same seed see the same batches, and their
    comparison is paired: with the same loss they train alike (see ``benchmarks/stsb_angle.py``).

    Subclasses :class:`~torch.utils.data.RandomSampler` so Lightning knows the data is shuffled.

    Args:
        num_samples: number of indices.
        seed: base seed; the same ``(seed, epoch)`` gives the same order.
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        super().__init__(range(num_samples))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())

    def __len__(self) -> int:
        return len(self.data_source)


class LengthGroupedBatchSampler(BatchSampler):
    """Batches of indices whose rows have similar ``lengths``; random, yet deterministic per ``(seed, epoch)``.

    Args:
        lengths: length of each row of the dataset (tokens or characters), indexed like the dataset.
        batch_size: rows per batch.
        shuffle: shuffle indices and batch order; without it, batches follow the data order within each mega-batch.
        seed: base seed for the shuffles.
        drop_last: drop the final incomplete batch.
        mega_batch_mult: a mega-batch holds ``batch_size * mega_batch_mult`` rows; larger groups lengths tighter.
        sampler: order of the indices to group; default a seeded :class:`EpochRandomSampler` (or the data order
            without ``shuffle``). Lightning passes a ``DistributedSampler`` here under DDP.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        mega_batch_mult: int = 50,
        sampler: Sampler[int] | None = None,
    ) -> None:
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.ndim != 1:
            raise ValueError(f"lengths must be a 1-d sequence of ints, got shape {lengths.shape}")
        if mega_batch_mult < 1:
            raise ValueError(f"mega_batch_mult must be at least 1, got {mega_batch_mult}")
        if sampler is None:
            sampler = EpochRandomSampler(len(lengths), seed) if shuffle else SequentialSampler(range(len(lengths)))
        super().__init__(sampler, batch_size, drop_last)  # checks batch_size and drop_last
        self.lengths = lengths
        self.shuffle = shuffle
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order (also forwarded to the inner sampler, which is what Lightning calls)."""
        self.epoch = epoch
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        indices = np.fromiter(iter(self.sampler), dtype=np.int64)
        mega = self.batch_size * self.mega_batch_mult  # a multiple of batch_size: only the last batch can be short
        batches: list[np.ndarray] = []
        for start in range(0, len(indices), mega):
            chunk = indices[start : start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]  # longest first
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        order = np.arange(len(batches))
        if self.shuffle:
            epoch = getattr(self.sampler, "epoch", self.epoch)  # the inner sampler's epoch is the one Lightning sets
            order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
        for b in order:
            yield batches[b].tolist()

    def __len__(self) -> int:
        n = len(self.sampler) if isinstance(self.sampler, Sized) else len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


# ----------------------------------------------------------------------------------------- several datasets

BatchingMode = Literal["single", "mixed"]
Interleave = Literal["proportional", "round_robin"]
SmallDataset = Literal["error", "partial"]

BATCHING_MODES = ("single", "mixed")
INTERLEAVES = ("proportional", "round_robin")
SMALL_DATASET_POLICIES = ("error", "partial")


def row_hashes(columns: Sequence[Sequence[str]]) -> np.ndarray:
    """Hashes of the texts of each row, from one sequence of texts per field (``[anchors, positives]``): ``(N, K)``."""
    if not columns:
        raise ValueError("row_hashes needs at least one column of texts")
    hashed = [text_hashes(column) for column in columns]
    sizes = {len(h) for h in hashed}
    if len(sizes) != 1:
        raise ValueError(f"row_hashes: the columns differ in length: {[len(h) for h in hashed]}")
    return np.stack(hashed, axis=1)  # (N, K)


@dataclass
class _DuplicateIndex:
    """Which rows can repeat a text of another row, computed once from the text hashes.

    Texts are numbered ``0 .. texts - 1`` (one number per distinct hash). ``key[row]`` is the number of the row's
    only text that occurs elsewhere too, ``-1`` for a row whose texts occur nowhere else (``clean``: it can never
    collide) and ``-2`` for a row with several such texts, whose numbers are in ``multi``.
    """

    key: np.ndarray  # (N,) int64
    multi: dict[int, tuple[int, ...]]
    texts: int

    CLEAN, MULTI = -1, -2


class _Batch:
    """A batch being filled. ``used`` (one flag per text number, shared by all batches of an epoch) marks the texts
    of this batch; :meth:`close` clears them for the next batch."""

    __slots__ = ("parts", "used", "marked", "size")

    def __init__(self, used: np.ndarray) -> None:
        self.parts: list[np.ndarray] = []
        self.used = used
        self.marked: list[np.ndarray] = []
        self.size = 0

    def add(self, rows: np.ndarray, texts: np.ndarray | None = None) -> None:
        if len(rows):
            self.parts.append(rows)
            self.size += len(rows)
        if texts is not None and len(texts):
            self.used[texts] = True
            self.marked.append(texts)

    def close(self) -> np.ndarray:
        """The batch's rows; its texts are unmarked."""
        for texts in self.marked:
            self.used[texts] = False
        if not self.parts:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]


class _Stream:
    """Rows in epoch order, handed out to batches; a row that would repeat a text of the batch waits (``pending``)
    and is offered first to the next batch (greedy fill, as sentence-transformers' ``NoDuplicatesBatchSampler``),
    vectorised: clean rows go in bulk, rows with one shared text by a first-occurrence test in numpy, and only rows
    with several shared texts one by one."""

    def __init__(self, rows: np.ndarray, index: _DuplicateIndex | None) -> None:
        self.rows = rows
        self.index = index
        self.pos = 0
        self.pending = np.empty(0, dtype=np.int64)

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.rows) and not len(self.pending)

    @property
    def left(self) -> int:
        return len(self.rows) - self.pos + len(self.pending)

    def _offer(self, batch: _Batch, rows: np.ndarray, limit: int) -> tuple[int, np.ndarray]:
        """Put the first ``limit`` rows of ``rows`` that fit into ``batch``; return (how many, the others in order)."""
        index = self.index
        assert index is not None
        keys = index.key[rows]  # (R,)
        fits = keys == _DuplicateIndex.CLEAN  # (R,)
        single = np.flatnonzero(keys >= 0)
        if len(single):
            texts = keys[single]
            _, first = np.unique(texts, return_index=True)  # the first row with each text
            keep = np.zeros(len(single), dtype=bool)
            keep[first] = True
            keep &= ~batch.used[texts]
            fits[single[keep]] = True
        if fits.sum() > limit:
            fits[np.flatnonzero(fits)[limit:]] = False
        batch.add(rows[fits], keys[fits & (keys >= 0)])
        taken = int(fits.sum())
        for i in np.flatnonzero(keys == _DuplicateIndex.MULTI).tolist():
            if taken == limit:
                break
            texts = index.multi[int(rows[i])]
            if not batch.used[list(texts)].any():
                batch.add(rows[i : i + 1], np.asarray(texts, dtype=np.int64))
                fits[i] = True
                taken += 1
        return taken, rows[~fits]

    def take(self, batch: _Batch, count: int) -> int:
        """Move up to ``count`` rows that repeat no text of ``batch`` into it; return how many moved."""
        if self.index is None:
            chunk = self.rows[self.pos : self.pos + count]
            self.pos += len(chunk)
            batch.add(chunk)
            return len(chunk)
        taken = 0
        if len(self.pending):
            taken, self.pending = self._offer(batch, self.pending, count)
        while taken < count and self.pos < len(self.rows):
            chunk = self.rows[self.pos : self.pos + count - taken]  # every row of it fits unless it shares a text
            self.pos += len(chunk)
            moved, waiting = self._offer(batch, chunk, count - taken)
            taken += moved
            if len(waiting):
                self.pending = np.concatenate([self.pending, waiting])
        return taken


class MultiDatasetBatchSampler(BatchSampler):
    """Batches over several datasets laid end to end (dataset ``d`` holds the global indices
    ``offsets[d] .. offsets[d] + sizes[d] - 1``), as in the "1B pairs" sentence-embedding recipe.

    Modes:

    - ``"single"``: every batch comes from one dataset (topic-coherent, harder in-batch negatives). The datasets'
      batches are interleaved ``"proportional"`` (all batches of all datasets in a random order, so a dataset's share
      of the steps follows its size) or ``"round_robin"`` (one batch of each dataset in turn, each round in a random
      dataset order, until the dataset with the fewest batches runs out: the datasets get equal shares and the larger
      ones show a different random subset every epoch).
    - ``"mixed"``: every batch holds at least two datasets. Each batch gets one row of the largest dataset and one of
      the others, then a random draw from all remaining rows (so the mix follows the datasets' sizes). It needs the
      datasets other than the largest to hold at least one row per batch of the epoch; a final batch of one row
      (``drop_last=False``) cannot mix and is left out.

    No duplicates: with ``hashes`` (per dataset, the ``(n_d, K_d)`` int64 hashes of each row's texts from
    :func:`row_hashes`) no text appears twice in a batch, across all fields (anchor, positive, negative) and datasets.
    The fill is greedy and vectorised: rows whose texts occur nowhere else (found once in ``__init__``) go in bulk,
    rows sharing one text with other rows by a first-occurrence test in numpy, and only rows with several shared
    texts one by one; a row that would repeat a text waits and is offered first to the next batch. Rows still
    waiting at the end of the epoch form the last batches (``"single"``) or are left out for the epoch
    (``"mixed"``, to keep every batch mixed).

    Order: a function of ``(seed, epoch)``; the epoch is that of ``sampler`` (what Lightning advances with
    ``set_epoch``) or set with :meth:`set_epoch`. ``__len__`` is exact: it builds (and caches) the epoch.

    Distributed: every rank builds the same global list of batches, cut to a multiple of ``num_replicas``; rank ``r``
    takes batches ``r, r + num_replicas, ...`` (disjoint, equal counts). ``num_replicas``/``rank`` come from the
    arguments, else from ``sampler`` when it is a ``DistributedSampler`` (what Lightning injects under DDP), else from
    ``torch.distributed`` when it is initialised, else 1/0.

    Args:
        sizes: rows per dataset, in the order the datasets are laid end to end.
        batch_size: rows per batch.
        mode: ``"single"`` or ``"mixed"``.
        interleave: ``"proportional"`` or ``"round_robin"`` (``"single"`` mode).
        hashes: per dataset, ``(n_d, K_d)`` text hashes of its rows; None allows duplicate texts in a batch.
        seed: base seed.
        drop_last: drop batches shorter than ``batch_size``.
        small_dataset: ``"single"`` mode with a dataset smaller than ``batch_size``: ``"error"`` raises;
            ``"partial"`` logs a warning and lets that dataset give one short batch per epoch (even with
            ``drop_last``).
        names: dataset names for messages; default ``dataset0``, ``dataset1`` ...
        num_replicas: number of DDP ranks.
        rank: this rank.
        sampler: holds the epoch (Lightning calls its ``set_epoch``); default an :class:`EpochRandomSampler` over all
            rows. Its own index order is not used.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        mode: BatchingMode = "single",
        interleave: Interleave = "proportional",
        hashes: Sequence[np.ndarray] | None = None,
        seed: int = 0,
        drop_last: bool = False,
        small_dataset: SmallDataset = "error",
        names: Sequence[str] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        sampler: Sampler[int] | None = None,
    ) -> None:
        sizes = [int(n) for n in sizes]
        if not sizes:
            raise ValueError("MultiDatasetBatchSampler needs at least one dataset")
        names = [f"dataset{i}" for i in range(len(sizes))] if names is None else [str(n) for n in names]
        if len(names) != len(sizes):
            raise ValueError(f"got {len(names)} names for {len(sizes)} datasets")
        empty = [name for name, n in zip(names, sizes, strict=True) if n <= 0]
        if empty:
            raise ValueError(f"dataset(s) {empty} have no rows")
        if mode not in BATCHING_MODES:
            raise ValueError(f"mode must be one of {BATCHING_MODES}, got {mode!r}")
        if interleave not in INTERLEAVES:
            raise ValueError(f"interleave must be one of {INTERLEAVES}, got {interleave!r}")
        if small_dataset not in SMALL_DATASET_POLICIES:
            raise ValueError(f"small_dataset must be one of {SMALL_DATASET_POLICIES}, got {small_dataset!r}")
        total = sum(sizes)
        if sampler is None:
            sampler = EpochRandomSampler(total, seed)
        super().__init__(sampler, batch_size, drop_last)  # checks batch_size and drop_last
        self.sizes = sizes
        self.names = names
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (D + 1,)
        self.mode = mode
        self.interleave = interleave
        self.seed = seed
        self.small_dataset = small_dataset
        self.epoch = 0
        self.num_replicas, self.rank = _replicas(num_replicas, rank, sampler)
        self._cache: tuple[int, list[np.ndarray]] | None = None

        self.small = [d for d, n in enumerate(sizes) if n < batch_size]
        if mode == "single" and self.small:
            listed = ", ".join(f"{names[d]!r} ({sizes[d]} rows)" for d in self.small)
            if small_dataset == "error":
                raise ValueError(
                    f"batch_size={batch_size} is larger than dataset(s) {listed}; in mode 'single' every batch comes "
                    "from one dataset. Lower batch_size, leave those datasets out, use mode 'mixed', or set "
                    "small_dataset='partial' to let each of them give one short batch per epoch"
                )
            log.warning(
                "batch_size=%d is larger than dataset(s) %s: each gives one short batch per epoch (small_dataset="
                "'partial')",
                batch_size,
                listed,
            )
        if mode == "mixed":
            self._check_mixable()

        self.duplicates: _DuplicateIndex | None = None
        if hashes is not None:
            self._index_duplicates(hashes)

    # ------------------------------------------------------------------ setup
    def _check_mixable(self) -> None:
        if len(self.sizes) < 2:
            raise ValueError(f"mode 'mixed' needs at least two datasets, got {self.names}")
        if self.batch_size < 2:
            raise ValueError("mode 'mixed' needs batch_size >= 2: a batch of one row cannot hold two datasets")
        largest = int(np.argmax(self.sizes))
        others = sum(self.sizes) - self.sizes[largest]
        batches = self._mixed_batch_sizes()
        if others < len(batches):
            raise ValueError(
                f"mode 'mixed' needs a row of a dataset other than the largest ({self.names[largest]!r}) in each of "
                f"the {len(batches)} batches of an epoch, but the others hold {others} rows in all. Use a larger "
                "batch_size, more rows from the smaller datasets, or mode 'single'"
            )

    def _index_duplicates(self, hashes: Sequence[np.ndarray]) -> None:
        if len(hashes) != len(self.sizes):
            raise ValueError(f"got hashes for {len(hashes)} datasets, expected {len(self.sizes)}")
        per_row: list[np.ndarray] = []
        for name, size, h in zip(self.names, self.sizes, hashes, strict=True):
            h = np.asarray(h, dtype=np.int64)
            h = h.reshape(-1, 1) if h.ndim == 1 else h
            if h.ndim != 2 or h.shape[0] != size:
                raise ValueError(f"hashes of {name!r} must have shape ({size}, K), got {tuple(h.shape)}")
            per_row.append(h)
        flat = np.concatenate([h.ravel() for h in per_row])  # every text of every row
        _, text_ids, counts = np.unique(flat, return_inverse=True, return_counts=True)  # one number per text
        text_ids = text_ids.reshape(-1)
        shared = counts[text_ids] > 1  # this text occurs more than once anywhere
        key = np.full(sum(self.sizes), _DuplicateIndex.CLEAN, dtype=np.int64)
        multi: dict[int, tuple[int, ...]] = {}
        start = 0
        for d, h in enumerate(per_row):
            ids = text_ids[start : start + h.size].reshape(h.shape)  # (n_d, K)
            mask = shared[start : start + h.size].reshape(h.shape)  # (n_d, K)
            start += h.size
            count = mask.sum(axis=1)  # (n_d,) texts of the row that occur elsewhere too
            offset = int(self.offsets[d])
            one = np.flatnonzero(count == 1)
            key[one + offset] = ids[one, mask[one].argmax(axis=1)]
            many = np.flatnonzero(count > 1)
            key[many + offset] = _DuplicateIndex.MULTI
            for row, row_ids, row_mask in zip(many.tolist(), ids[many].tolist(), mask[many].tolist(), strict=True):
                multi[row + offset] = tuple(sorted({i for i, m in zip(row_ids, row_mask, strict=True) if m}))
        self.duplicates = _DuplicateIndex(key=key, multi=multi, texts=len(counts))

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order (also forwarded to the inner sampler, which is what Lightning calls)."""
        self.epoch = epoch
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    @property
    def current_epoch(self) -> int:
        """The epoch the next iteration builds: the inner sampler's (Lightning sets that one), else ours."""
        return int(getattr(self.sampler, "epoch", self.epoch))

    def dataset_of(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dataset number of each global index."""
        return np.searchsorted(self.offsets, np.asarray(indices, dtype=np.int64), side="right") - 1

    def global_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """All batches of an epoch before the split between ranks (global indices)."""
        epoch = self.current_epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        return self._single(rng) if self.mode == "single" else self._mixed(rng)

    def _batches(self) -> list[np.ndarray]:
        epoch = self.current_epoch
        if self._cache is None or self._cache[0] != epoch:
            batches = self.global_batches(epoch)
            usable = len(batches) - len(batches) % self.num_replicas
            self._cache = (epoch, batches[self.rank : usable : self.num_replicas])
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._batches():
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self._batches())

    # ------------------------------------------------------------------ building
    @property
    def shared_rows(self) -> float:
        """Share of the rows holding a text that occurs in another row too (0 without hashes)."""
        return 0.0 if self.duplicates is None else float((self.duplicates.key != _DuplicateIndex.CLEAN).mean())

    def _used(self) -> np.ndarray:
        return np.zeros(0 if self.duplicates is None else self.duplicates.texts, dtype=bool)

    def _stream(self, rows: np.ndarray) -> _Stream:
        return _Stream(rows, self.duplicates)

    def _fill(self, rows: np.ndarray, keep_short: bool) -> list[np.ndarray]:
        """Cut ``rows`` (epoch order) into batches, without duplicate texts when hashes were given."""
        size = self.batch_size
        if self.duplicates is None:
            batches = [rows[i : i + size] for i in range(0, len(rows), size)]
        else:
            stream, batches, used = self._stream(rows), [], self._used()
            while not stream.exhausted:
                batch = _Batch(used)
                stream.take(batch, size)
                batches.append(batch.close())
        if self.drop_last and not keep_short:
            batches = [b for b in batches if len(b) == size]
        return batches

    def _single(self, rng: np.random.Generator) -> list[np.ndarray]:
        per_dataset = []
        for d, size in enumerate(self.sizes):
            rows = self.offsets[d] + rng.permutation(size)
            per_dataset.append(self._fill(rows, keep_short=d in self.small))
        if self.interleave == "proportional":
            batches = [b for dataset in per_dataset for b in dataset]
            return [batches[i] for i in rng.permutation(len(batches))]
        rounds = min(len(dataset) for dataset in per_dataset)
        return [per_dataset[d][i] for i in range(rounds) for d in rng.permutation(len(per_dataset))]

    def _mixed_batch_sizes(self) -> list[int]:
        total, size = sum(self.sizes), self.batch_size
        sizes = [size] * (total // size)
        if not self.drop_last and total % size >= 2:  # a final batch of one row cannot hold two datasets
            sizes.append(total % size)
        return sizes

    def _mixed(self, rng: np.random.Generator) -> list[np.ndarray]:
        sizes = self._mixed_batch_sizes()
        count = len(sizes)
        largest = int(np.argmax(self.sizes))
        main = self.offsets[largest] + rng.permutation(self.sizes[largest])
        others = np.concatenate(
            [np.arange(self.offsets[d], self.offsets[d + 1]) for d in range(len(self.sizes)) if d != largest]
        )
        others = rng.permutation(others)
        rest = rng.permutation(np.concatenate([main[count:], others[count:]]))
        main, others = main[:count], others[:count]  # one row of each per batch
        if self.duplicates is None:
            starts = np.concatenate([[0], np.cumsum(sizes) - 2 * np.arange(1, count + 1)])
            return [
                np.concatenate([main[j : j + 1], others[j : j + 1], rest[starts[j] : starts[j] + sizes[j] - 2]])
                for j in range(count)
            ]
        streams = [self._stream(main), self._stream(others), self._stream(rest)]
        batches, used = [], self._used()
        for size in sizes:
            batch = _Batch(used)
            streams[0].take(batch, 1)
            streams[1].take(batch, 1)
            for stream in (streams[2], streams[1], streams[0]):  # then top up from whatever is left
                if batch.size < size:
                    stream.take(batch, size - batch.size)
            rows = batch.close()
            if len(rows) >= 2 and len(np.unique(self.dataset_of(rows))) >= 2:
                batches.append(rows)
        left = sum(s.left for s in streams)
        if left:
            log.debug("mixed no-duplicates epoch: %d rows left out (they would repeat a text)", left)
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return batches


def _replicas(num_replicas: int | None, rank: int | None, sampler: Sampler[int]) -> tuple[int, int]:
    if num_replicas is None:
        num_replicas = getattr(sampler, "num_replicas", None)
    if rank is None:
        rank = getattr(sampler, "rank", None)
    if num_replicas is None or rank is None:
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if initialised else 1
        if rank is None:
            rank = torch.distributed.get_rank() if initialised else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas} and {rank}")
    return int(num_replicas), int(rank)
