"""(text, class) and 0/1-pair row formats, P x K class batches, and the collator for anchor-only rows."""

from __future__ import annotations

import logging
from collections import Counter

import datasets
import pytest
import torch

from lightembed.data import PairDataModule
from lightembed.data.class_sampler import ClassBatchSampler
from lightembed.data.collators import PairCollator
from lightembed.data.formats import FORMATS, convert, convert_row, to_fields


def _convert(name: str, rows: dict, on_bad_row: str = "error") -> datasets.Dataset:
    fmt = FORMATS[name]
    return convert(to_fields(datasets.Dataset.from_dict(rows), fmt.mapping(None)), fmt, on_bad_row)


def test_labelled_texts_number_label_names_in_sorted_order_and_log_the_mapping(caplog):
    with caplog.at_level(logging.INFO, logger="lightembed.data.formats"):
        out = _convert("labelled_texts", {"text": ["a", "b", "c", "d"], "label": ["LOC", "DESC", "NUM", "DESC"]})
    assert out.column_names == ["anchor", "label"]
    assert out["label"] == [1, 0, 2, 0]  # DESC=0, LOC=1, NUM=2
    assert "'DESC': 0, 'LOC': 1, 'NUM': 2" in caplog.text
    assert _convert("labelled_texts", {"text": ["a", "b"], "label": [3, 1]})["label"] == [3, 1]  # ids kept


def test_labelled_texts_bad_labels_name_the_row_or_are_skipped():
    rows = {"text": ["a", "b", "c"], "label": [0, -1, 2]}
    with pytest.raises(ValueError, match="row 1: a missing, negative or fractional class label"):
        _convert("labelled_texts", rows)
    assert _convert("labelled_texts", rows, "skip")["anchor"] == ["a", "c"]
    assert not FORMATS["labelled_texts"].streamable  # the name -> id mapping needs the whole source


def test_labelled_pairs_read_0_1_labels_and_reject_others():
    for labels in ([1, 0, 1], ["1", "0", "true"], [1.0, 0.0, 1.0]):
        rows = {"sentence1": ["a", "b", "c"], "sentence2": ["x", "y", "z"], "label": labels}
        out = _convert("labelled_pairs", rows)
        assert out.column_names == ["anchor", "positive", "label"] and out["label"] == [1, 0, 1]
    bad = {"sentence1": ["a", "b"], "sentence2": ["x", "y"], "label": [1, 2]}
    with pytest.raises(ValueError, match="row 1: a label that is not 0 or 1"):
        _convert("labelled_pairs", bad)
    assert _convert("labelled_pairs", bad, "skip")["label"] == [1]
    fmt = FORMATS["labelled_pairs"]
    assert convert_row({"anchor": "a", "positive": "x", "label": 1.0}, fmt) == {
        "anchor": "a",
        "positive": "x",
        "label": 1,
    }
    with pytest.raises(ValueError, match="0/1 label"):
        convert_row({"anchor": "a", "positive": "x", "label": 3}, fmt)


def test_nli_labelled_pairs_are_entailment_1_contradiction_0_without_neutral():
    rows = {
        "premise": ["p", "p", "p"],
        "hypothesis": ["e", "n", "c"],
        "label": ["entailment", "neutral", "contradiction"],
    }
    out = _convert("nli_labelled_pairs", rows)
    assert list(zip(out["positive"], out["label"], strict=True)) == [("e", 1), ("c", 0)]
    fmt = FORMATS["nli_labelled_pairs"]
    streamed = [
        convert_row({"premise": "p", "hypothesis": h, "label": y}, fmt)
        for h, y in zip("enc", rows["label"], strict=True)
    ]
    assert streamed == [
        {"anchor": "p", "positive": "e", "label": 1},
        None,
        {"anchor": "p", "positive": "c", "label": 0},
    ]


def test_class_batches_are_p_classes_times_k_examples_deterministic_per_seed_and_epoch():
    labels = [i % 5 for i in range(53)] + [9]  # class 9 has one example: never usable
    sampler = ClassBatchSampler(labels, classes_per_batch=3, examples_per_class=4, seed=7)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {4}
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat))  # no row twice in an epoch
    assert list(ClassBatchSampler(labels, 3, 4, seed=7)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches and len(list(sampler)) == len(batches)
    with pytest.raises(ValueError, match="at least 6 classes"):
        ClassBatchSampler(labels, 6, 4)
    with pytest.raises(ValueError, match="examples_per_class must be at least 2"):
        ClassBatchSampler(labels, 3, 1)


def test_class_batches_under_ddp_split_one_global_epoch_between_ranks():
    labels = [i % 6 for i in range(100)]
    reference = ClassBatchSampler(labels, 2, 3, seed=1)
    everything = reference.global_batches(epoch=0)
    ranks = [list(ClassBatchSampler(labels, 2, 3, seed=1, num_replicas=2, rank=r)) for r in range(2)]
    usable = len(everything) - len(everything) % 2
    assert ranks[0] == everything[0:usable:2] and ranks[1] == everything[1:usable:2]
    assert len(ranks[0]) == len(ranks[1]) == len(ClassBatchSampler(labels, 2, 3, num_replicas=2, rank=0))
    seen = [i for batches in ranks for batch in batches for i in batch]
    assert len(seen) == len(set(seen))  # no row on two ranks


def test_lightning_injects_its_distributed_sampler_and_advances_the_epoch_through_it():
    """Under DDP Lightning re-creates the batch sampler with a DistributedSampler as ``sampler`` and then calls
    ``set_epoch`` on that inner sampler only: the rank and the epoch must both come from it."""
    from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

    labels = [i % 6 for i in range(100)]
    with _replace_dunder_methods(BatchSampler):
        loader = DataLoader(range(100), batch_sampler=ClassBatchSampler(labels, 2, 3, seed=4))
    inner = DistributedSampler(range(100), num_replicas=2, rank=1, shuffle=True, seed=0)
    updated = _update_dataloader(loader, inner)
    sampler = updated.batch_sampler
    assert isinstance(sampler, ClassBatchSampler) and sampler.sampler is inner
    assert (sampler.num_replicas, sampler.rank, sampler.seed) == (2, 1, 4)
    _set_sampler_epoch(updated, 3)
    everything = ClassBatchSampler(labels, 2, 3, seed=4).global_batches(epoch=3)
    assert list(sampler) == everything[1 : len(everything) - len(everything) % 2 : 2]
    assert list(sampler) != ClassBatchSampler(labels, 2, 3, seed=4).global_batches(epoch=0)[1::2][: len(sampler)]


def test_collator_takes_anchor_only_rows_with_a_label(tokenizer):
    batch = PairCollator(tokenizer, 16)([{"anchor": "a cat", "label": 2}, {"anchor": "a dog", "label": 0}])
    assert set(batch) == {"anchor", "anchor_ids", "label"}
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [2, 0]
    with pytest.raises(ValueError, match="'positive'"):
        PairCollator(tokenizer, 16)([{"anchor": "a cat"}])  # without a label a row is still a pair


def test_datamodule_makes_class_batches(tiny_bert_dir, tmp_path, write_jsonl):
    rows = [{"text": f"question {i}", "label": "ABC"[i % 3]} for i in range(18)]
    path = write_jsonl(tmp_path / "labels.jsonl", rows)
    dm = PairDataModule(
        train=str(path), train_format="labelled_texts", tokenizer=str(tiny_bert_dir), batch_size=4, examples_per_class=2
    )
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 4  # 3 classes x 3 pairs each, 2 classes per batch
    for batch in batches:
        assert "positive" not in batch and sorted(Counter(batch["label"].tolist()).values()) == [2, 2]


def test_class_batch_option_errors(tiny_bert_dir):
    with pytest.raises(ValueError, match="examples_per_class needs train_format='labelled_texts'"):
        PairDataModule(train="x", train_format="pairs", tokenizer=str(tiny_bert_dir), examples_per_class=2)
    with pytest.raises(ValueError, match="divide batch_size"):
        PairDataModule(
            train="x", train_format="labelled_texts", tokenizer=str(tiny_bert_dir), batch_size=6, examples_per_class=4
        )
