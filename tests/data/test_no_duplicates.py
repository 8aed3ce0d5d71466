"""The no-duplicates rule: one greedy fill for the in-memory sampler and the streamed batcher, checked against a
naive loop and against each other on the same rows."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from lightembed.data.collators import normalize_text
from lightembed.data.no_duplicates import (
    Batch,
    DuplicateIndex,
    RowQueue,
    StreamedTexts,
    fill_batches,
    row_hashes,
)
from lightembed.data.streaming import StreamingPairBatches


def _rows(n: int, anchors: int, positives: int | None, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows drawing anchors from ``anchors`` texts and positives from ``positives`` (None: all different)."""
    rng = np.random.default_rng(seed)
    return [
        {
            "anchor": f"anchor {rng.integers(anchors)}",
            "positive": f"Positive  {i if positives is None else rng.integers(positives)}",
        }
        for i in range(n)
    ]


def _hashes(rows: list[dict[str, str]]) -> np.ndarray:
    return row_hashes([[r["anchor"] for r in rows], [r["positive"] for r in rows]])  # (N, 2)


def _naive(rows: list[dict[str, str]], batch_size: int) -> list[list[int]]:
    """Greedy fill written as a loop: waiting rows first, then new ones; a row joins if none of its texts is in."""
    pending: list[int] = []
    order = iter(range(len(rows)))
    batches, ran_out = [], False
    while pending or not ran_out:
        batch, texts, waiting = [], set(), []
        for i in pending:
            keys = {normalize_text(t) for t in rows[i].values()}
            if len(batch) < batch_size and not keys & texts:
                batch.append(i)
                texts |= keys
            else:
                waiting.append(i)
        pending = waiting
        while len(batch) < batch_size:
            i = next(order, None)
            if i is None:
                ran_out = True
                break
            keys = {normalize_text(t) for t in rows[i].values()}
            if keys & texts:
                pending.append(i)
            else:
                batch.append(i)
                texts |= keys
        batches.append(batch)
    return [b for b in batches if b]


def _streamed_fill(rows: list[dict[str, str]], batch_size: int) -> list[list[int]]:
    texts = StreamedTexts()
    hashes = _hashes(rows)
    source = iter(range(len(rows)))

    def pull(count: int) -> np.ndarray:
        numbers = [i for _, i in zip(range(count), source, strict=False)]
        for i in numbers:
            texts.add(i, hashes[i])
        return np.asarray(numbers, dtype=np.int64)

    queue, marks, batches = RowQueue(texts, pull=pull), texts.marks(), []
    while not queue.exhausted:
        batch = Batch(marks)
        queue.take(batch, batch_size)
        rows_of_batch = batch.close()
        if len(rows_of_batch):
            batches.append(rows_of_batch.tolist())
    return batches


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch_size", [3, 8])
def test_streamed_fill_is_the_naive_greedy_loop(seed, batch_size):
    rows = _rows(60, anchors=12, positives=25, seed=seed)  # rows share anchors, positives, or both
    assert _streamed_fill(rows, batch_size) == _naive(rows, batch_size)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch_size", [3, 8])
def test_in_memory_fill_equals_the_streamed_fill_when_rows_share_one_text(seed, batch_size):
    """With at most one shared text per row the vectorised in-memory fill makes the same batches as the row-by-row
    streamed fill: it is the same rule, only sped up by what the index knows in advance."""
    rows = _rows(80, anchors=15, positives=None, seed=seed)  # anchors repeat, positives never
    hashes = _hashes(rows)
    index = DuplicateIndex.from_hashes([hashes], [len(rows)], ["d"])
    assert not index.multi and (index.key >= 0).mean() > 0.5  # most rows share their anchor, none shares two texts
    mapped = [b.tolist() for b in fill_batches(np.arange(len(rows)), batch_size, index)]
    assert mapped == _streamed_fill(rows, batch_size) == _naive(rows, batch_size)
    for batch in mapped:
        keys = [normalize_text(t) for i in batch for t in rows[i].values()]
        assert len(keys) == len(set(keys))


def test_the_streaming_batcher_and_the_in_memory_fill_make_the_same_batches():
    rows = _rows(90, anchors=20, positives=None, seed=7)
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset()
    streamed = list(StreamingPairBatches({"d": stream}, 6, shuffle_buffer=0, drop_last=False))
    index = DuplicateIndex.from_hashes([_hashes(rows)], [len(rows)], ["d"])
    mapped = [[rows[i] for i in b.tolist()] for b in fill_batches(np.arange(len(rows)), 6, index)]
    # the streamed epoch ends with the first batch the source cannot fill; until then the batches are the same
    assert len(streamed) >= len(mapped) - 2 and streamed == mapped[: len(streamed)]
    assert all(len(b) == 6 for b in streamed[:-1])


def test_without_an_index_rows_go_in_order():
    assert [b.tolist() for b in fill_batches(np.arange(7), 3, None)] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="either rows or pull"):
        RowQueue(None)
