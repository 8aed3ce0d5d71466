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
or every batch mixing at least two (``"mixed"``), optionally with no text twice in a batch (the rule of
:mod:`lightembed.data.no_duplicates`, applied to each dataset's rows); it splits the epoch's batches between DDP ranks
itself. In ``single`` mode each dataset is batched on its own and an interleaving strategy, picked by name from
:data:`INTERLEAVES`, orders the per-dataset batches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Literal

import numpy as np
import torch
from torch.utils.data import BatchSampler, RandomSampler, Sampler, SequentialSampler

from lightembed.data.collators import text_hashes
from lightembed.data.no_duplicates import Batch, DuplicateIndex, RowQueue, fill_batches, row_hashes

__all__ = [
    "EpochRandomSampler",
    "INTERLEAVES",
    "LengthGroupedBatchSampler",
    "MultiDatasetBatchSampler",
    "row_hashes",
    "text_hashes",
]

log = logging.getLogger(__name__)


class EpochRandomSampler(RandomSampler):
    """A random permutation of ``range(num_samples)`` fixed by ``(seed, epoch)``; advance it with ``set_epoch``.

    The permutation is torch's ``randperm`` with a generator seeded by ``seed + epoch``: the order torch's
    ``DistributedSampler`` gives on one device, and the order sentence-transformers' trainer gives in its first epoch
    with the same seed. So a lightembed run and a peer run with the same seed see the same batches, which makes
    their comparison paired: a difference in the result comes from the training, not from the batch order.

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
SMALL_DATASET_POLICIES = ("error", "partial")


def proportional(per_dataset: list[list[np.ndarray]], rng: np.random.Generator) -> list[np.ndarray]:
    """All batches of all datasets in a random order: a dataset's share of the steps follows its size."""
    batches = [b for dataset in per_dataset for b in dataset]
    return [batches[i] for i in rng.permutation(len(batches))]


def round_robin(per_dataset: list[list[np.ndarray]], rng: np.random.Generator) -> list[np.ndarray]:
    """One batch of each dataset in turn, each round in a random dataset order, until the dataset with the fewest
    batches runs out: equal shares, and the larger datasets show a different random subset every epoch."""
    rounds = min(len(dataset) for dataset in per_dataset)
    return [per_dataset[d][i] for i in range(rounds) for d in rng.permutation(len(per_dataset))]


INTERLEAVES: dict[str, Callable[[list[list[np.ndarray]], np.random.Generator], list[np.ndarray]]] = {
    "proportional": proportional,
    "round_robin": round_robin,
}
"""``single`` mode: how the per-dataset batches are interleaved, by name."""


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
    :func:`row_hashes`) no text appears twice in a batch, across all fields (anchor, positive, negative) and datasets:
    the greedy fill of :mod:`lightembed.data.no_duplicates` (a row that would repeat a text waits and is offered
    first to the next batch). Rows still waiting at the end of the epoch form the last batches (``"single"``) or are
    left out for the epoch (``"mixed"``, to keep every batch mixed).

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
            raise ValueError(f"interleave must be one of {list(INTERLEAVES)}, got {interleave!r}")
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
        self.num_replicas, self.rank = replicas(num_replicas, rank, sampler)
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

        self.duplicates = None if hashes is None else DuplicateIndex.from_hashes(hashes, sizes, names)

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
        return 0.0 if self.duplicates is None else self.duplicates.shared_rows

    def _fill(self, rows: np.ndarray, keep_short: bool) -> list[np.ndarray]:
        """One dataset's batches: ``rows`` (epoch order) cut into batches, without duplicate texts with hashes."""
        batches = fill_batches(rows, self.batch_size, self.duplicates)
        if self.drop_last and not keep_short:
            batches = [b for b in batches if len(b) == self.batch_size]
        return batches

    def _single(self, rng: np.random.Generator) -> list[np.ndarray]:
        per_dataset = []
        for d, size in enumerate(self.sizes):
            rows = self.offsets[d] + rng.permutation(size)
            per_dataset.append(self._fill(rows, keep_short=d in self.small))
        return INTERLEAVES[self.interleave](per_dataset, rng)

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
        streams = [RowQueue(self.duplicates, main), RowQueue(self.duplicates, others), RowQueue(self.duplicates, rest)]
        batches, marks = [], self.duplicates.marks()
        for size in sizes:
            batch = Batch(marks)
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


def replicas(num_replicas: int | None, rank: int | None, sampler: Sampler[int]) -> tuple[int, int]:
    """DDP world size and rank: the arguments, else an injected ``DistributedSampler``'s, else ``torch.distributed``'s
    when initialised, else 1 and 0."""
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
