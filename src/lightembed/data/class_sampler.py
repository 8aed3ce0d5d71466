"""P x K class batches: each batch holds ``P`` classes with ``K`` examples each, for the batch triplet losses.

A batch triplet loss (batch-hard, batch-semi-hard, batch-all) needs, for every anchor, a positive (another example
of its class) and negatives (other classes) inside the batch. Random batches of a many-example, few-class set rarely
give every class two examples; P x K batches ("In Defense of the Triplet Loss for Person Re-Identification", Alexander
Hermans, Lucas Beyer and Bastian Leibe, 2017) always do. sentence-transformers' ``GroupByLabelBatchSampler`` is the
peer (two examples per class, round robin); this one takes ``K`` as an option.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


class ClassBatchSampler(Sampler[list[int]]):
    """Batches of ``classes_per_batch`` (P) distinct classes x ``examples_per_class`` (K) examples, random yet
    deterministic per ``(seed, epoch)``.

    Each epoch, every class's examples are shuffled and cut into groups of ``K`` (a class's last ``n mod K`` examples
    sit out that epoch, a different few each epoch). Each batch takes one group from each of the ``P`` classes with the
    most groups left (ties broken at random), which uses as many groups as possible; the batch order is then shuffled.
    So every epoch has the same number of batches (:meth:`__len__`), each of exactly ``P * K`` rows.

    Args:
        labels: class id (or any hashable label) of each row, indexed like the dataset.
        classes_per_batch: ``P >= 2``, distinct classes per batch (a negative needs another class).
        examples_per_class: ``K >= 2``, examples per class in a batch (a positive needs another example).
        seed: base seed; the same ``(seed, epoch)`` gives the same batches.

    Raises:
        ValueError: ``P`` or ``K`` below 2, or fewer than ``P`` classes with ``K`` examples.
    """

    def __init__(self, labels: Sequence[int], classes_per_batch: int, examples_per_class: int, seed: int = 0) -> None:
        if classes_per_batch < 2:
            raise ValueError(
                f"classes per batch must be at least 2 (negatives come from other classes), got {classes_per_batch}"
            )
        if examples_per_class < 2:
            raise ValueError(
                f"examples_per_class must be at least 2 (a positive is another example), got {examples_per_class}"
            )
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
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
        for b in rng.permutation(len(batches)):
            yield batches[b]

    def __len__(self) -> int:
        return len(self._plan(np.zeros(len(self.groups))))
