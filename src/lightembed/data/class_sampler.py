"""P x K class batches: each batch holds ``P`` classes with ``K`` examples each, for the batch triplet losses.

A batch triplet loss (batch-hard, batch-semi-hard, batch-all) needs, for every anchor, a positive (another example
of its class) and negatives (other classes) inside the batch. Random batches of a many-example, few-class set rarely
give every class two examples; P x K batches ("In Defense of the Triplet Loss for Person Re-Identification", Alexander
Hermans, Lucas Beyer and Bastian Leibe, 2017) always do. sentence-transformers' ``GroupByLabelBatchSampler`` is the
peer (two examples per class, round robin); this one takes ``K`` as an option.

Epochs and DDP follow :class:`~lightembed.data.samplers.MultiDatasetBatchSampler`: Lightning calls ``set_epoch`` on
``dataloader.batch_sampler.sampler`` only (never on the batch sampler), so the epoch is read from that inner sampler;
under DDP Lightning re-creates the batch sampler with a ``DistributedSampler`` as ``sampler``, from which the rank and
world size are read, and every rank builds the same global batches and takes every ``num_replicas``-th.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import BatchSampler, Sampler

from lightembed.data.samplers import EpochRandomSampler, replicas

log = logging.getLogger(__name__)


class ClassBatchSampler(BatchSampler):
    """Batches of ``classes_per_batch`` (P) distinct classes x ``examples_per_class`` (K) examples, random yet
    deterministic per ``(seed, epoch)``.

    Each epoch, every class's examples are shuffled and cut into groups of ``K`` (a class's last ``n mod K`` examples
    sit out that epoch, a different few each epoch). Each batch takes one group from each of the ``P`` classes with the
    most groups left (ties broken at random), which uses as many groups as possible; the batch order is then shuffled.
    So every epoch has the same number of batches (:meth:`__len__`), each of exactly ``P * K`` rows.

    Distributed: the epoch's batches are cut to a multiple of ``num_replicas`` and rank ``r`` takes batches
    ``r, r + num_replicas, ...`` (disjoint, equal counts on every rank).

    Args:
        labels: class id (or any hashable label) of each row, indexed like the dataset.
        classes_per_batch: ``P >= 2``, distinct classes per batch (a negative needs another class).
        examples_per_class: ``K >= 2``, examples per class in a batch (a positive needs another example).
        seed: base seed; the same ``(seed, epoch)`` gives the same batches.
        num_replicas: number of DDP ranks (default: from ``sampler`` or ``torch.distributed``, else 1).
        rank: this rank (default likewise, else 0).
        sampler: holds the epoch (Lightning calls its ``set_epoch``); its own index order is not used. Default an
            :class:`~lightembed.data.samplers.EpochRandomSampler` over the rows.

    Raises:
        ValueError: ``P`` or ``K`` below 2, or fewer than ``P`` classes with ``K`` examples.
    """

    def __init__(
        self,
        labels: Sequence[int],
        classes_per_batch: int,
        examples_per_class: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        sampler: Sampler[int] | None = None,
    ) -> None:
        if classes_per_batch < 2:
            raise ValueError(
                f"classes per batch must be at least 2 (negatives come from other classes), got {classes_per_batch}"
            )
        if examples_per_class < 2:
            raise ValueError(
                f"examples_per_class must be at least 2 (a positive is another example), got {examples_per_class}"
            )
        if sampler is None:
            sampler = EpochRandomSampler(len(labels), seed)
        super().__init__(sampler, classes_per_batch * examples_per_class, drop_last=True)
        classes: dict[object, list[int]] = {}
        for index, label in enumerate(labels):
            classes.setdefault(label, []).append(index)
        self.groups = {
            c: np.asarray(rows, dtype=np.int64) for c, rows in classes.items() if len(rows) >= examples_per_class
        }
        small = sorted(map(str, set(classes) - set(self.groups)))
        if small:
            log.warning("classes with fewer than %d examples never appear in a batch: %s", examples_per_class, small)
        if len(self.groups) < classes_per_batch:
            raise ValueError(
                f"P x K batches need at least {classes_per_batch} classes with {examples_per_class} examples each; "
                f"the training data has {len(self.groups)}: lower batch_size or examples_per_class"
            )
        self.classes_per_batch = classes_per_batch
        self.examples_per_class = examples_per_class
        self.seed = seed
        self.epoch = 0
        self.num_replicas, self.rank = replicas(num_replicas, rank, sampler)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def _current_epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", self.epoch))  # the inner sampler's epoch is the one Lightning sets

    def _plan(self, tie_break: np.ndarray) -> list[list[int]]:
        """Class positions (into ``self.groups``) of each batch: the P classes with most groups left, ties by
        ``tie_break`` (smaller first)."""
        left = np.array([len(rows) // self.examples_per_class for rows in self.groups.values()])  # (C,)
        plan: list[list[int]] = []
        while np.count_nonzero(left) >= self.classes_per_batch:
            chosen = np.lexsort((tie_break, -left))[: self.classes_per_batch]  # most groups left first
            left[chosen] -= 1
            plan.append(chosen.tolist())
        return plan

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """Every batch of ``epoch`` (default: the current one) in order, before the split between ranks."""
        rng = np.random.default_rng([self.seed, self._current_epoch() if epoch is None else epoch])
        k = self.examples_per_class
        shuffled = [rng.permutation(rows) for rows in self.groups.values()]
        used = [0] * len(shuffled)
        batches: list[list[int]] = []
        for classes in self._plan(rng.random(len(shuffled))):
            rows: list[int] = []
            for c in classes:
                rows.extend(shuffled[c][used[c] : used[c] + k].tolist())
                used[c] += k
            batches.append(rows)
        return [batches[b] for b in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches()
        usable = len(batches) - len(batches) % self.num_replicas
        yield from batches[self.rank : usable : self.num_replicas]

    def __len__(self) -> int:
        return len(self._plan(np.zeros(len(self.groups)))) // self.num_replicas
