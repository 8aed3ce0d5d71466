"""LengthGroupedBatchSampler: coverage, length, determinism per (seed, epoch), grouping, Lightning epochs and DDP."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lightembed.data.samplers import EpochRandomSampler, LengthGroupedBatchSampler


def _lengths(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(1, 200, n).tolist()


@pytest.mark.parametrize("n", [1, 7, 64, 101, 1000])
@pytest.mark.parametrize("batch_size", [1, 8, 13])
@pytest.mark.parametrize("drop_last", [False, True])
def test_each_index_once_and_len(n, batch_size, drop_last):
    sampler = LengthGroupedBatchSampler(_lengths(n), batch_size, drop_last=drop_last, mega_batch_mult=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (n // batch_size if drop_last else math.ceil(n / batch_size))
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    if drop_last:
        assert all(len(b) == batch_size for b in batches)
        assert len(flat) == len(batches) * batch_size
    else:
        assert sorted(flat) == list(range(n))
    assert sum(len(b) < batch_size for b in batches) <= (0 if drop_last else 1)


def test_deterministic_per_seed_and_epoch():
    lengths = _lengths(500)

    def order(seed, epoch):
        sampler = LengthGroupedBatchSampler(lengths, 16, seed=seed, mega_batch_mult=4)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(1, 0)
    assert order(0, 0) != order(0, 1)
    sampler = LengthGroupedBatchSampler(lengths, 16, mega_batch_mult=4)
    assert list(sampler) == list(sampler)  # iterating again without set_epoch repeats the epoch
    sampler.set_epoch(3)
    assert list(sampler) == order(0, 3)


def test_batches_are_length_homogeneous():
    lengths = np.array(_lengths(256))
    sampler = LengthGroupedBatchSampler(lengths.tolist(), 16, mega_batch_mult=1000)  # one mega-batch: full sort
    spans = sorted((lengths[b].min(), lengths[b].max()) for b in sampler)
    for (_, high), (low, _) in zip(spans, spans[1:], strict=False):
        assert high <= low  # batches cover disjoint length ranges
    for batch in sampler:
        assert list(lengths[batch]) == sorted(lengths[batch], reverse=True)  # longest first within a batch

    grouped = LengthGroupedBatchSampler(lengths.tolist(), 16, mega_batch_mult=4)
    random = np.random.default_rng(0).permutation(256).reshape(-1, 16)
    spread = np.mean([np.ptp(lengths[b]) for b in grouped])
    assert spread < 0.5 * np.mean([np.ptp(lengths[b]) for b in random])


def test_without_shuffle_keeps_data_order_between_mega_batches():
    lengths = [1, 5, 3, 2, 8, 7, 6, 4]
    sampler = LengthGroupedBatchSampler(lengths, 2, shuffle=False, mega_batch_mult=2)
    assert list(sampler) == [[1, 2], [3, 0], [4, 5], [6, 7]]
    sampler.set_epoch(5)
    assert list(sampler) == [[1, 2], [3, 0], [4, 5], [6, 7]]


def test_epoch_random_sampler():
    sampler = EpochRandomSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and len(sampler) == 10
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_distributed_shards_cover_the_data():
    lengths = _lengths(101)
    shards = []
    for rank in range(2):
        inner = DistributedSampler(range(101), num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler = LengthGroupedBatchSampler(lengths, 8, sampler=inner)
        batches = list(sampler)
        assert len(batches) == len(sampler) == math.ceil(51 / 8)
        shards.append({i for b in batches for i in b})
    assert shards[0] | shards[1] == set(range(101))


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen.append([])
        self.seen[-1].append(batch.tolist())
        return (self.weight * 0).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_two_epochs(lengths) -> list[list[list[int]]]:
    sampler = LengthGroupedBatchSampler(lengths, 4, seed=7, mega_batch_mult=2)
    loader = DataLoader(torch.arange(len(lengths)), batch_sampler=sampler)
    module = _Recorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    return module.seen


def test_lightning_advances_the_epoch():
    lengths = _lengths(40)
    seen = _fit_two_epochs(lengths)
    assert len(seen) == 2 and seen[0] != seen[1]
    assert seen == _fit_two_epochs(lengths)
    expected = LengthGroupedBatchSampler(lengths, 4, seed=7, mega_batch_mult=2)
    for epoch in (0, 1):
        expected.set_epoch(epoch)
        assert seen[epoch] == list(expected)


def test_lightning_can_inject_a_distributed_sampler():
    """What Lightning does under DDP (private helpers of lightning 2.6): re-create the batch sampler with `sampler`."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler

    lengths = _lengths(50)
    with _replace_dunder_methods(BatchSampler):
        loader = DataLoader(range(50), batch_sampler=LengthGroupedBatchSampler(lengths, 4, seed=1))
    inner = DistributedSampler(range(50), num_replicas=2, rank=1, shuffle=True, seed=0)
    updated = _update_dataloader(loader, inner)
    assert isinstance(updated.batch_sampler, LengthGroupedBatchSampler)
    assert updated.batch_sampler.sampler is inner and updated.batch_sampler.seed == 1
    assert sorted(i for b in updated.batch_sampler for i in b) == sorted(inner)
