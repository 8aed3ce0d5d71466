"""Batch samplers: group rows of similar length so dynamic padding wastes little compute.

:class:`LengthGroupedBatchSampler` follows the "mega-batch" scheme of Hugging Face's ``LengthGroupedSampler``:
shuffle the indices, split them into mega-batches of ``batch_size * mega_batch_mult``, sort each mega-batch by length
(longest first), cut it into batches and shuffle the order of the batches. Batches hold texts of similar length
while their content and order stay random.

Epochs and distributed training: the index order comes from an inner ``sampler`` (by default a seeded
:class:`EpochRandomSampler`). Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler`` each epoch, and
under DDP it re-creates this batch sampler with a ``DistributedSampler`` passed as ``sampler``, so each rank groups
its own shard and the epoch still changes the order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized

import numpy as np
from torch.utils.data import BatchSampler, RandomSampler, Sampler, SequentialSampler


class EpochRandomSampler(RandomSampler):
    """A random permutation of ``range(num_samples)`` fixed by ``(seed, epoch)``; advance it with ``set_epoch``.

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
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(rng.permutation(len(self.data_source)).tolist())

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
