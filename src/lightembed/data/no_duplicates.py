"""No text twice in a batch: the one rule and the one greedy fill, for in-memory and streamed training data.

A text's key is its :func:`~lightembed.data.collators.text_hashes` hash (the normalised form the collator's ``*_ids``
use), so "the same text" means the same thing to the batcher and to the duplicate-aware losses. A row fits a batch
when none of its texts is in the batch yet. The fill is greedy, as sentence-transformers'
``NoDuplicatesBatchSampler``: rows are offered in order; a row that does not fit waits and is offered first to the
next batch.

:class:`RowQueue` implements the fill once. What differs between the two paths is only what is known in advance:

- in memory (:class:`DuplicateIndex`, built from every row's hashes): rows whose texts occur nowhere else can never
  collide and go in bulk, rows sharing one text go by a first-occurrence test in numpy, and only rows with several
  shared texts are looked at one by one. The result is the greedy fill's for every row that shares at most one text.
- streamed (:class:`StreamedTexts`, rows registered as they are read): nothing is known in advance, so every row is
  looked at one by one against the set of the batch's hashes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lightembed.data.collators import text_hashes

CLEAN, MULTI = -1, -2
"""Row keys: ``CLEAN`` rows repeat no text of another row; ``MULTI`` rows are checked text by text."""


def row_hashes(columns: Sequence[Sequence[str]]) -> np.ndarray:
    """Hashes of the texts of each row, from one sequence of texts per field (``[anchors, positives]``): ``(N, K)``."""
    if not columns:
        raise ValueError("row_hashes needs at least one column of texts")
    hashed = [text_hashes(column) for column in columns]
    sizes = {len(h) for h in hashed}
    if len(sizes) != 1:
        raise ValueError(f"row_hashes: the columns differ in length: {[len(h) for h in hashed]}")
    return np.stack(hashed, axis=1)  # (N, K)


class ArrayMarks:
    """The texts of the current batch as one flag per text number (in memory: texts are numbered in advance)."""

    def __init__(self, texts: int) -> None:
        self.flags = np.zeros(texts, dtype=bool)

    def used(self, texts: np.ndarray) -> np.ndarray:
        return self.flags[texts]

    def mark(self, texts: np.ndarray) -> None:
        self.flags[texts] = True

    def unmark(self, texts: np.ndarray) -> None:
        self.flags[texts] = False


class SetMarks:
    """The texts of the current batch as a set of hashes (streamed: texts are not numbered)."""

    def __init__(self) -> None:
        self.hashes: set[int] = set()

    def used(self, texts: np.ndarray) -> np.ndarray:
        return np.fromiter((t in self.hashes for t in texts.tolist()), dtype=bool, count=len(texts))

    def mark(self, texts: np.ndarray) -> None:
        self.hashes.update(texts.tolist())

    def unmark(self, texts: np.ndarray) -> None:
        self.hashes.difference_update(texts.tolist())


@dataclass
class DuplicateIndex:
    """Which rows can repeat a text of another row, computed once from the hashes of every row (in memory).

    Texts are numbered ``0 .. texts - 1`` (one number per distinct hash). ``key[row]`` is the number of the row's
    only text that occurs elsewhere too, ``CLEAN`` for a row whose texts occur nowhere else (it can never collide)
    and ``MULTI`` for a row with several such texts, whose numbers are in ``multi``.
    """

    key: np.ndarray  # (N,) int64
    multi: dict[int, tuple[int, ...]]
    texts: int

    @classmethod
    def from_hashes(cls, hashes: Sequence[np.ndarray], sizes: Sequence[int], names: Sequence[str]) -> DuplicateIndex:
        """The index of datasets laid end to end; ``hashes[d]`` is the ``(n_d, K_d)`` of dataset ``d``."""
        if len(hashes) != len(sizes):
            raise ValueError(f"got hashes for {len(hashes)} datasets, expected {len(sizes)}")
        per_row: list[np.ndarray] = []
        for name, size, h in zip(names, sizes, hashes, strict=True):
            h = np.asarray(h, dtype=np.int64)
            h = h.reshape(-1, 1) if h.ndim == 1 else h
            if h.ndim != 2 or h.shape[0] != size:
                raise ValueError(f"hashes of {name!r} must have shape ({size}, K), got {tuple(h.shape)}")
            per_row.append(h)
        flat = np.concatenate([h.ravel() for h in per_row])  # every text of every row
        _, text_ids, counts = np.unique(flat, return_inverse=True, return_counts=True)  # one number per text
        text_ids = text_ids.reshape(-1)
        shared = counts[text_ids] > 1  # this text occurs more than once anywhere
        key = np.full(sum(sizes), CLEAN, dtype=np.int64)
        multi: dict[int, tuple[int, ...]] = {}
        start, offset = 0, 0
        for h in per_row:
            ids = text_ids[start : start + h.size].reshape(h.shape)  # (n_d, K)
            mask = shared[start : start + h.size].reshape(h.shape)  # (n_d, K)
            start += h.size
            count = mask.sum(axis=1)  # (n_d,) texts of the row that occur elsewhere too
            one = np.flatnonzero(count == 1)
            key[one + offset] = ids[one, mask[one].argmax(axis=1)]
            many = np.flatnonzero(count > 1)
            key[many + offset] = MULTI
            for row, row_ids, row_mask in zip(many.tolist(), ids[many].tolist(), mask[many].tolist(), strict=True):
                multi[row + offset] = tuple(sorted({i for i, m in zip(row_ids, row_mask, strict=True) if m}))
            offset += h.shape[0]
        return cls(key=key, multi=multi, texts=len(counts))

    def keys(self, rows: np.ndarray) -> np.ndarray:
        return self.key[rows]

    def texts_of(self, row: int) -> np.ndarray:
        return np.asarray(self.multi[row], dtype=np.int64)

    def marks(self) -> ArrayMarks:
        return ArrayMarks(self.texts)

    @property
    def shared_rows(self) -> float:
        """Share of the rows holding a text that occurs in another row too."""
        return float((self.key != CLEAN).mean())


class StreamedTexts:
    """The texts of streamed rows, registered as they are read (row number -> its distinct hashes)."""

    def __init__(self) -> None:
        self.rows: dict[int, np.ndarray] = {}

    def add(self, row: int, hashes: np.ndarray) -> None:
        self.rows[row] = np.unique(hashes)

    def forget(self, rows: np.ndarray) -> None:
        for row in rows.tolist():
            self.rows.pop(row, None)

    def keys(self, rows: np.ndarray) -> np.ndarray:
        return np.full(len(rows), MULTI, dtype=np.int64)

    def texts_of(self, row: int) -> np.ndarray:
        return self.rows[row]

    def marks(self) -> SetMarks:
        return SetMarks()


Index = DuplicateIndex | StreamedTexts


class Batch:
    """A batch being filled. ``marks`` (shared by all batches of an epoch) hold the texts of this batch;
    :meth:`close` clears them for the next batch."""

    __slots__ = ("parts", "marks", "marked", "size")

    def __init__(self, marks: ArrayMarks | SetMarks | None) -> None:
        self.parts: list[np.ndarray] = []
        self.marks = marks
        self.marked: list[np.ndarray] = []
        self.size = 0

    def add(self, rows: np.ndarray, texts: np.ndarray | None = None) -> None:
        if len(rows):
            self.parts.append(rows)
            self.size += len(rows)
        if texts is not None and len(texts) and self.marks is not None:
            self.marks.mark(texts)
            self.marked.append(texts)

    def close(self) -> np.ndarray:
        """The batch's rows; its texts are unmarked."""
        if self.marks is not None:
            for texts in self.marked:
                self.marks.unmark(texts)
        if not self.parts:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]


class RowQueue:
    """Rows in order, handed out to batches; a row that would repeat a text of the batch waits (``pending``) and is
    offered first to the next batch.

    Args:
        index: what is known of the rows' texts; None allows duplicates (rows go in order).
        rows: the rows in order (in memory), or
        pull: a function giving up to ``n`` next row numbers (streamed; an empty array when the rows run out).
        max_waiting: stop reading new rows while this many wait (bounds the memory of a streamed source).
    """

    def __init__(
        self,
        index: Index | None,
        rows: np.ndarray | None = None,
        pull: Callable[[int], np.ndarray] | None = None,
        max_waiting: int | None = None,
    ) -> None:
        if (rows is None) == (pull is None):
            raise ValueError("RowQueue takes either rows or pull")
        self.index = index
        self.rows = rows
        self.pull = pull
        self.max_waiting = max_waiting
        self.pos = 0
        self.ran_out = False
        self.pending = np.empty(0, dtype=np.int64)

    def _next(self, count: int) -> np.ndarray:
        if self.rows is not None:
            chunk = self.rows[self.pos : self.pos + count]
            self.pos += len(chunk)
            self.ran_out = self.pos >= len(self.rows)
            return chunk
        chunk = self.pull(count)  # type: ignore[misc]
        self.ran_out = len(chunk) == 0
        return chunk

    @property
    def more(self) -> bool:
        """Whether rows that were never offered may be left."""
        return not self.ran_out if self.rows is None else self.pos < len(self.rows)

    @property
    def exhausted(self) -> bool:
        return not self.more and not len(self.pending)

    @property
    def waiting_full(self) -> bool:
        return self.max_waiting is not None and len(self.pending) >= self.max_waiting

    @property
    def left(self) -> int:
        never = len(self.rows) - self.pos if self.rows is not None else 0
        return never + len(self.pending)

    def _offer(self, batch: Batch, rows: np.ndarray, limit: int) -> tuple[int, np.ndarray]:
        """Put the first ``limit`` rows of ``rows`` that fit into ``batch``; return (how many, the others in order)."""
        index, marks = self.index, batch.marks
        assert index is not None and marks is not None
        keys = index.keys(rows)  # (R,)
        fits = keys == CLEAN  # (R,)
        single = np.flatnonzero(keys >= 0)
        if len(single):
            texts = keys[single]
            _, first = np.unique(texts, return_index=True)  # the first row with each text
            keep = np.zeros(len(single), dtype=bool)
            keep[first] = True
            keep &= ~marks.used(texts)
            fits[single[keep]] = True
        if fits.sum() > limit:
            fits[np.flatnonzero(fits)[limit:]] = False
        batch.add(rows[fits], keys[fits & (keys >= 0)])
        taken = int(fits.sum())
        for i in np.flatnonzero(keys == MULTI).tolist():
            if taken == limit:
                break
            texts = index.texts_of(int(rows[i]))
            if not marks.used(texts).any():
                batch.add(rows[i : i + 1], texts)
                fits[i] = True
                taken += 1
        return taken, rows[~fits]

    def take(self, batch: Batch, count: int) -> int:
        """Move up to ``count`` rows that repeat no text of ``batch`` into it; return how many moved."""
        if self.index is None:
            chunk = self._next(count)
            batch.add(chunk)
            return len(chunk)
        taken = 0
        if len(self.pending):
            taken, self.pending = self._offer(batch, self.pending, count)
        while taken < count and self.more and not self.waiting_full:
            chunk = self._next(count - taken)  # every row of it fits unless it shares a text
            moved, waiting = self._offer(batch, chunk, count - taken)
            taken += moved
            if len(waiting):
                self.pending = np.concatenate([self.pending, waiting])
        return taken


def fill_batches(rows: np.ndarray, batch_size: int, index: Index | None) -> list[np.ndarray]:
    """Cut ``rows`` (in order) into batches of ``batch_size``, without a text twice in a batch when ``index`` is
    given (rows that wait form later batches); the last batch may be short."""
    if index is None:
        return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    queue, batches, marks = RowQueue(index, rows), [], index.marks()
    while not queue.exhausted:
        batch = Batch(marks)
        queue.take(batch, batch_size)
        batches.append(batch.close())
    return batches
