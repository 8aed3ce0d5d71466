"""LengthGroupedBatchSampler: coverage, length, determinism per (seed, epoch), grouping, Lightning epochs and DDP."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

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


@pytest.mark.parametrize("seed", [0, 3])
def test_epoch_random_sampler_draws_the_peers_order(seed):
    """The order of torch's DistributedSampler on one device at every epoch, and of a RandomSampler with a generator
    seeded by the seed (sentence-transformers' trainer) at the first: runs with the same seed are paired."""
    ours = EpochRandomSampler(101, seed=seed)
    distributed = DistributedSampler(range(101), num_replicas=1, rank=0, shuffle=True, seed=seed)
    for epoch in range(3):
        ours.set_epoch(epoch)
        distributed.set_epoch(epoch)
        assert list(ours) == list(distributed)
    ours.set_epoch(0)
    peer = RandomSampler(range(101), generator=torch.Generator().manual_seed(seed))
    assert list(ours) == list(peer)


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


# ------------------------------------------------------------------------------------- MultiDatasetBatchSampler

from lightembed.data.samplers import MultiDatasetBatchSampler, row_hashes, text_hashes  # noqa: E402


def _flat(batches) -> list[int]:
    return [i for b in batches for i in b]


def _owners(sampler: MultiDatasetBatchSampler, batch) -> set[int]:
    return set(sampler.dataset_of(batch).tolist())


def test_text_hashes_follow_the_collators_normalisation():
    h = text_hashes(["A  man\tsings.", "a man sings.", " A MAN SINGS. ", "a man sang."])
    assert h.dtype == np.int64 and h.shape == (4,)
    assert h[0] == h[1] == h[2] != h[3]
    assert np.array_equal(text_hashes(["x", "y"]), text_hashes(["x", "y"]))  # stable, not Python's salted hash
    rows = row_hashes([["a", "b"], ["c", "A"]])
    assert rows.shape == (2, 2) and rows[0, 0] == rows[1, 1]
    with pytest.raises(ValueError, match="differ in length"):
        row_hashes([["a"], ["b", "c"]])


@pytest.mark.parametrize("interleave", ["proportional", "round_robin"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_single_mode_batches_come_from_one_dataset(interleave, drop_last):
    sizes = [40, 25, 13]
    sampler = MultiDatasetBatchSampler(sizes, 6, interleave=interleave, drop_last=drop_last, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert all(len(_owners(sampler, b)) == 1 for b in batches)
    flat = _flat(batches)
    assert len(flat) == len(set(flat))
    if drop_last:
        assert all(len(b) == 6 for b in batches)
    per_dataset = np.bincount([_owners(sampler, b).pop() for b in batches], minlength=3)
    if interleave == "proportional":
        full = [n // 6 if drop_last else math.ceil(n / 6) for n in sizes]
        assert per_dataset.tolist() == full  # every dataset gives all its batches
        if not drop_last:
            assert sorted(flat) == list(range(sum(sizes)))
    else:
        rounds = min(n // 6 if drop_last else math.ceil(n / 6) for n in sizes)
        assert per_dataset.tolist() == [rounds] * 3  # equal shares, one batch of each dataset per round
        for r in range(rounds):
            assert {_owners(sampler, b).pop() for b in batches[3 * r : 3 * r + 3]} == {0, 1, 2}


def test_single_mode_proportional_order_is_mixed_across_datasets():
    sampler = MultiDatasetBatchSampler([400, 400], 10, seed=0)
    owners = [_owners(sampler, b).pop() for b in sampler]
    assert owners != sorted(owners)  # the datasets are interleaved, not one after the other
    switches = sum(a != b for a, b in zip(owners, owners[1:], strict=False))
    assert switches > 20


@pytest.mark.parametrize("drop_last", [False, True])
def test_mixed_mode_every_batch_holds_two_datasets(drop_last):
    sizes = [100, 30, 9]
    sampler = MultiDatasetBatchSampler(sizes, 8, mode="mixed", drop_last=drop_last, seed=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (139 // 8 if drop_last else math.ceil(139 / 8))
    assert all(len(_owners(sampler, b)) >= 2 for b in batches)
    flat = _flat(batches)
    assert len(flat) == len(set(flat))
    if drop_last:
        assert all(len(b) == 8 for b in batches)
    else:
        assert sorted(flat) == list(range(139))
    # the mix follows the datasets' sizes on the whole
    share = np.bincount(sampler.dataset_of(flat), minlength=3) / len(flat)
    assert share[0] > share[1] > share[2]


def test_mixed_mode_refuses_what_cannot_mix():
    with pytest.raises(ValueError, match="at least two datasets"):
        MultiDatasetBatchSampler([10], 2, mode="mixed")
    with pytest.raises(ValueError, match="others hold 3 rows"):
        MultiDatasetBatchSampler([100, 3], 10, mode="mixed")  # 10 batches, 3 rows to go around
    with pytest.raises(ValueError, match="batch_size >= 2"):
        MultiDatasetBatchSampler([5, 5], 1, mode="mixed")
    # a last batch of one row cannot mix: it is left out
    sampler = MultiDatasetBatchSampler([6, 3], 4, mode="mixed")
    assert [len(b) for b in sampler] == [4, 4]


def test_batch_size_larger_than_a_dataset_in_single_mode(caplog):
    with pytest.raises(ValueError, match=r"batch_size=8 is larger than dataset\(s\) 'tiny' \(5 rows\)"):
        MultiDatasetBatchSampler([50, 5], 8, names=["big", "tiny"])
    with caplog.at_level("WARNING", logger="lightembed.data.samplers"):
        sampler = MultiDatasetBatchSampler([50, 5], 8, names=["big", "tiny"], small_dataset="partial", drop_last=True)
    assert "'tiny' (5 rows)" in caplog.text and "one short batch" in caplog.text
    batches = list(sampler)
    short = [b for b in batches if len(b) < 8]
    assert len(short) == 1 and sorted(short[0]) == list(range(50, 55))  # kept despite drop_last
    assert len(batches) == 50 // 8 + 1


def _texts_with_duplicates() -> list[dict]:
    """Two handwritten datasets whose rows share texts within and across datasets."""
    a = [
        ("a dog runs", "a dog is running"),
        ("a dog runs", "the dog is fast"),  # same anchor
        ("A  DOG runs", "dogs run"),  # same anchor after normalisation
        ("a cat sleeps", "a cat is asleep"),
        ("a cat is asleep", "the cat rests"),  # anchor = positive of another row
        ("kids play", "children play"),
        ("kids play", "children play"),  # an exact duplicate row
        ("a man cooks", "a man is cooking"),
        ("a woman sings", "a woman is singing"),
        ("the sun rises", "morning comes"),
    ]
    b = [
        ("a dog runs", "a puppy sprints"),  # shares an anchor with dataset a
        ("rain falls", "it is raining"),
        ("it is raining", "wet weather"),
        ("birds fly", "birds are flying"),
        ("a car stops", "the car halts"),
        ("a car stops", "a vehicle brakes"),
    ]
    return [a, b]


@pytest.mark.parametrize("mode", ["single", "mixed"])
@pytest.mark.parametrize("batch_size", [2, 3, 4])
def test_no_duplicates_keeps_every_text_once_per_batch(mode, batch_size):
    datasets = _texts_with_duplicates()
    hashes = [row_hashes([[r[0] for r in d], [r[1] for r in d]]) for d in datasets]
    texts = [t for d in datasets for t in d]
    sizes = [len(d) for d in datasets]
    if mode == "mixed" and batch_size == 2:  # 8 batches, but only 6 rows outside the largest dataset
        with pytest.raises(ValueError, match="others hold 6 rows"):
            MultiDatasetBatchSampler(sizes, batch_size, mode=mode, hashes=hashes)
        return
    for seed in range(5):
        sampler = MultiDatasetBatchSampler(sizes, batch_size, mode=mode, hashes=hashes, seed=seed)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        for batch in batches:
            keys = [" ".join(t.split()).casefold() for i in batch for t in texts[i]]
            assert len(keys) == len(set(keys)), (seed, batch, keys)
            if mode == "mixed":
                assert len(_owners(sampler, batch)) >= 2
        flat = _flat(batches)
        assert len(flat) == len(set(flat))
        if mode == "single":
            assert sorted(flat) == list(range(sum(sizes)))  # nothing is lost: waiting rows form later batches


def test_without_no_duplicates_duplicates_can_share_a_batch():
    # 4 rows with the same anchor, batch size 4, one dataset: they must share the one batch
    hashes = [row_hashes([["same"] * 4, ["p1", "p2", "p3", "p4"]])]
    assert [len(b) for b in MultiDatasetBatchSampler([4], 4)] == [4]
    assert sorted(len(b) for b in MultiDatasetBatchSampler([4], 4, hashes=hashes)) == [1, 1, 1, 1]


def test_multi_sampler_deterministic_per_seed_and_epoch():
    def order(seed, epoch, mode="single", **kw):
        sampler = MultiDatasetBatchSampler([30, 20], 4, mode=mode, seed=seed, **kw)
        sampler.set_epoch(epoch)
        return list(sampler)

    for mode in ("single", "mixed"):
        assert order(0, 0, mode) == order(0, 0, mode)
        assert order(0, 0, mode) != order(1, 0, mode)
        assert order(0, 0, mode) != order(0, 1, mode)
    hashes = [row_hashes([[f"t{i % 7}" for i in range(30)]]), row_hashes([[f"t{i % 9}" for i in range(20)]])]
    assert order(3, 2, hashes=hashes) == order(3, 2, hashes=hashes)
    assert order(3, 2, hashes=hashes) != order(3, 1, hashes=hashes)
    sampler = MultiDatasetBatchSampler([30, 20], 4, seed=5)
    first = list(sampler)
    assert list(sampler) == first  # iterating again without set_epoch repeats the epoch
    sampler.sampler.set_epoch(1)  # what Lightning calls
    assert list(sampler) == order(5, 1)


@pytest.mark.parametrize("mode", ["single", "mixed"])
@pytest.mark.parametrize("world", [2, 3])
def test_simulated_ranks_get_disjoint_batches(mode, world):
    sizes = [53, 31, 17]
    hashes = [row_hashes([[f"text {i % 40}" for i in range(n)]]) for n in sizes]
    for no_dup in (None, hashes):
        reference = MultiDatasetBatchSampler(sizes, 5, mode=mode, hashes=no_dup, seed=4)
        reference.set_epoch(2)
        everything = [b.tolist() for b in reference.global_batches()]
        ranks = []
        for rank in range(world):
            sampler = MultiDatasetBatchSampler(
                sizes, 5, mode=mode, hashes=no_dup, seed=4, num_replicas=world, rank=rank
            )
            sampler.set_epoch(2)
            ranks.append(list(sampler))
            assert len(ranks[-1]) == len(sampler) == len(everything) // world
        seen = [i for batches in ranks for i in _flat(batches)]
        assert len(seen) == len(set(seen))  # no row on two ranks
        usable = len(everything) - len(everything) % world
        assert sorted(map(sorted, (b for batches in ranks for b in batches))) == sorted(
            map(sorted, everything[:usable])
        )


def test_rank_comes_from_an_injected_distributed_sampler():
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler

    with _replace_dunder_methods(BatchSampler):
        loader = DataLoader(range(60), batch_sampler=MultiDatasetBatchSampler([40, 20], 4, seed=3))
    inner = DistributedSampler(range(60), num_replicas=2, rank=1, shuffle=True, seed=0)
    updated = _update_dataloader(loader, inner)
    sampler = updated.batch_sampler
    assert isinstance(sampler, MultiDatasetBatchSampler) and sampler.sampler is inner
    assert (sampler.num_replicas, sampler.rank, sampler.seed) == (2, 1, 3)
    inner.set_epoch(1)
    reference = MultiDatasetBatchSampler([40, 20], 4, seed=3)
    everything = reference.global_batches(epoch=1)
    assert [b for b in sampler] == [b.tolist() for b in everything[1::2]]


def test_multi_sampler_rejects_bad_input():
    with pytest.raises(ValueError, match="no rows"):
        MultiDatasetBatchSampler([5, 0], 2, names=["a", "empty"])
    with pytest.raises(ValueError, match="mode must be"):
        MultiDatasetBatchSampler([5], 2, mode="both")
    with pytest.raises(ValueError, match="hashes of 'dataset0' must have shape"):
        MultiDatasetBatchSampler([5], 2, hashes=[np.zeros((4, 2), dtype=np.int64)])
    with pytest.raises(ValueError, match="rank"):
        MultiDatasetBatchSampler([5], 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError):
        MultiDatasetBatchSampler([5], 0)


def test_lightning_advances_the_epoch_of_the_multi_sampler():
    sampler = MultiDatasetBatchSampler([12, 8], 4, seed=7)
    loader = DataLoader(torch.arange(20), batch_sampler=sampler)
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
    expected = MultiDatasetBatchSampler([12, 8], 4, seed=7)
    assert module.seen == [[b.tolist() for b in expected.global_batches(epoch)] for epoch in (0, 1)]
    assert module.seen[0] != module.seen[1]
