"""MultiDatasetDataModule on handwritten files: the dataset laid end to end, batch composition per mode, no duplicate
texts, duplicates as positives in the loss, the evaluation-set contract, the YAML configs through the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from lightembed.data import PairSource, load_pairs
from lightembed.data.batches import EvaluationSets, evaluation_sets
from lightembed.data.multi import MultiDataset, MultiDatasetDataModule
from lightembed.data.samplers import MultiDatasetBatchSampler
from lightembed.losses import InBatchNegativesLoss

ROOT = Path(__file__).resolve().parents[2]

TRIPLETS_SOURCE = {
    "source": "triplets.jsonl",
    "format": "triplets",
    "columns": {"query": "anchor", "doc": "positive", "hard": "negative"},
}
SOURCES = {
    "nli": {"source": "nli.jsonl", "format": "nli_triplets"},
    "para": {"source": "para.jsonl", "where": {"label": 1}},
    "sts": {"source": "sts.jsonl", "min_score": 4.0},
}


@pytest.fixture
def make_dm(tiny_bert_dir, data_root):
    def make(**options) -> MultiDatasetDataModule:
        options.setdefault("tokenizer", str(tiny_bert_dir))
        options.setdefault("data_root", str(data_root))
        options.setdefault("train", SOURCES)
        return MultiDatasetDataModule(**options)

    return make


def test_multi_dataset_fetches_rows_in_order(data_root):
    parts = {
        "a": load_pairs(PairSource("sts.jsonl"), str(data_root)),
        "b": load_pairs(PairSource("nli.jsonl", format="nli_triplets"), str(data_root)),
    }
    ds = MultiDataset(parts)
    assert len(ds) == 10 and ds.sizes == [5, 5] and ds.fields == [["anchor", "positive"], TRIPLET]
    rows = ds.__getitems__([7, 0, 5, 4])
    assert rows[0] == parts["b"][2] and rows[1] == parts["a"][0] and rows[2] == parts["b"][0]
    assert rows[3] == parts["a"][4] and set(rows[1]) == {"anchor", "positive"}
    assert ds[6] == parts["b"][1]
    with pytest.raises(IndexError):
        ds[10]


TRIPLET = ["anchor", "positive", "negative"]


# ------------------------------------------------------------------------------------------------ the data module


def _batches(dm):
    loader = dm.train_dataloader()
    return loader, list(loader)


def _texts(batch, tokenizer_dir) -> list[str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    fields = [f for f in TRIPLET if f in batch]
    return [tok.decode(ids, skip_special_tokens=True) for f in fields for ids in batch[f]["input_ids"]]


def test_single_mode_batches_and_fields(make_dm, tiny_bert_dir):
    dm = make_dm(batch_size=2, small_dataset="error", seed=0)
    assert dm.train_names == ["nli", "para", "sts"]
    dm.setup("fit")
    ds = dm.train_dataset
    assert ds.names == ["nli", "para", "sts"] and ds.sizes == [5, 5, 3]
    loader, batches = _batches(dm)
    sampler = loader.batch_sampler
    assert isinstance(sampler, MultiDatasetBatchSampler) and sampler.mode == "single"
    assert len(batches) == len(loader)
    for indices, batch in zip(sampler, batches, strict=True):
        owner = set(sampler.dataset_of(indices).tolist())
        assert len(owner) == 1
        has_negative = owner == {0}  # only the NLI triplets have negatives
        assert ("negative" in batch) == has_negative and ("negative_ids" in batch) == has_negative
        ids = torch.cat([batch[f"{f}_ids"] for f in TRIPLET if f"{f}_ids" in batch])
        assert len(ids.unique()) == len(ids)  # no text twice in a batch


def test_mixed_mode_drops_negatives_unless_all_have_them(make_dm, caplog):
    dm = make_dm(batching="mixed", batch_size=3)
    with caplog.at_level(logging.WARNING, logger="lightembed.data.multi"):
        dm.setup("fit")
    assert "dropping 'negative'" in caplog.text
    loader, batches = _batches(dm)
    for indices, batch in zip(loader.batch_sampler, batches, strict=True):
        assert len(set(loader.batch_sampler.dataset_of(indices).tolist())) >= 2
        assert set(batch) == {"anchor", "positive", "anchor_ids", "positive_ids"}

    both = make_dm(
        batching="mixed",
        batch_size=3,
        train={
            "nli": SOURCES["nli"],
            "trip": {
                "source": "triplets.jsonl",
                "format": "triplets",
                "columns": {"query": "anchor", "doc": "positive", "hard": "negative"},
            },
        },
    )
    both.setup("fit")
    assert all("negative" in b for b in both.train_dataloader())


def test_batch_size_larger_than_a_dataset(make_dm, caplog):
    dm = make_dm(batch_size=4)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"larger than dataset\(s\) 'sts' \(3 rows\)"):
        dm.train_dataloader()
    dm = make_dm(batch_size=4, small_dataset="partial", drop_last=True)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="lightembed.data.samplers"):
        loader = dm.train_dataloader()
    assert "'sts' (3 rows)" in caplog.text
    sizes = sorted(len(b["anchor_ids"]) for b in loader)
    assert sizes == [3, 4, 4]  # nli 5 -> 1 full batch, para 5 -> 1, sts -> its one short batch


def test_deterministic_and_reshuffled_per_epoch(make_dm):
    def order(seed, epoch):
        dm = make_dm(batch_size=2, seed=seed)
        dm.setup("fit")
        sampler = dm.train_dataloader().batch_sampler
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)


def test_duplicates_in_a_batch_are_positives_for_the_loss(make_dm):
    """Without no_duplicates, a batch can hold the same text twice; the collator's ids mark it and the in-batch
    loss counts the copy as a positive instead of a negative."""
    dm = make_dm(batch_size=5, no_duplicates=False, train={"nli": SOURCES["nli"]})
    dm.setup("fit")
    [batch] = list(dm.train_dataloader())  # all 5 NLI triplets; the park premise appears twice
    assert len(batch["anchor_ids"].unique()) == 4
    a_ids, p_ids = batch["anchor_ids"], batch["positive_ids"]
    twins = [(i, j) for i in range(5) for j in range(5) if i != j and a_ids[i] == a_ids[j]]
    assert len(twins) == 2

    torch.manual_seed(0)
    anchor, positive = torch.randn(5, 8), torch.randn(5, 8)
    loss = InBatchNegativesLoss(temperature=0.1, duplicates="positive")
    with_ids = loss(anchor, positive, anchor_ids=a_ids, positive_ids=p_ids)
    # by hand: for anchor i, the positives of every row with the same anchor text are positives too
    logits = torch.nn.functional.normalize(anchor, dim=-1) @ torch.nn.functional.normalize(positive, dim=-1).T / 0.1
    same = a_ids.unsqueeze(1) == a_ids.unsqueeze(0)  # (5, 5)
    expected = (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~same, -torch.inf), 1)).mean()
    assert with_ids.item() == pytest.approx(expected.item(), rel=1e-5)
    assert with_ids.item() != pytest.approx(loss(anchor, positive).item(), rel=1e-3)  # plain InfoNCE differs


def test_training_step_on_multi_dataset_batches(make_dm, tiny_bert_dir):
    from lightembed.encoder import EncoderSettings
    from lightembed.losses import AnglEObjectiveLoss
    from lightembed.stages import ContrastiveModule

    dm = make_dm(batch_size=3, train={"nli": SOURCES["nli"], "nli2": {**SOURCES["nli"], "limit": 3}})
    dm.setup("fit")
    module = ContrastiveModule(EncoderSettings(backbone=str(tiny_bert_dir), max_length=32), loss=AnglEObjectiveLoss())
    module.configure_model()
    for i, batch in enumerate(dm.train_dataloader()):
        loss = module.training_step(batch, i)
        assert torch.isfinite(loss) and loss.requires_grad


def test_hparams_hold_only_this_modules_options(make_dm):
    dm = make_dm(batch_size=2, batching="mixed")
    assert dm.hparams.batching == "mixed" and dm.hparams.train == SOURCES
    for key in ("train_format", "columns", "length_grouping", "score_range", "nli_scores", "train_split"):
        assert key not in dm.hparams
    with pytest.raises(ValueError, match="batching must be"):
        make_dm(batching="sometimes")


def test_is_its_own_data_module_with_evaluation_sets(make_dm):
    from lightning import LightningDataModule

    from lightembed.data import PairDataModule

    dm = make_dm(val={"sts": "sts.jsonl", "sts2": "sts.jsonl"}, test={"t": "sts.jsonl"})
    assert isinstance(dm, LightningDataModule) and not isinstance(dm, PairDataModule)
    assert isinstance(dm, EvaluationSets) and evaluation_sets(dm) is dm
    assert dm.val_names == dm.sts_val_names == ["sts", "sts2"] and dm.test_names == ["t"] and dm.batch_size == 32


def test_no_training_source(make_dm):
    dm = make_dm(train=None, val={"sts": "sts.jsonl"})
    dm.setup("fit")
    assert dm.train_dataset is None and len(dm.val_dataloader()) == 1
    with pytest.raises(ValueError, match="no training source"):
        dm.train_dataloader()


def test_fit_from_the_multi_configs(tiny_bert_dir, data_root, tmp_path, monkeypatch):
    from lightembed.cli import cli_main

    monkeypatch.chdir(tmp_path)
    train = {
        "nli": SOURCES["nli"],
        "trip": {
            "source": "triplets.jsonl",
            "format": "triplets",
            "columns": {"query": "anchor", "doc": "positive", "hard": "negative"},
        },
    }
    for config in ("multi_single.yaml", "multi_mixed.yaml"):
        cli_main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/trainer/cpu.yaml"),
                "--config",
                str(ROOT / "configs/model/angle_minilm.yaml"),
                "--config",
                str(ROOT / "configs/data" / config),
                "--model.init_args.encoder.backbone",
                str(tiny_bert_dir),
                "--model.init_args.encoder.max_length",
                "32",
                "--data.init_args.data_root",
                str(data_root),
                "--data.init_args.train",
                json.dumps(train),
                "--data.init_args.val",
                json.dumps({"sts": "sts.jsonl"}),
                "--data.init_args.test",
                json.dumps({"sts": "sts.jsonl"}),
                "--data.init_args.batch_size",
                "4",  # mixed: 3 batches of 4 over 14 rows, 5 of them outside the largest dataset
                "--trainer.max_steps",
                "2",
                "--trainer.logger.init_args.save_dir",
                str(tmp_path / "runs"),
            ]
        )
    assert len(list((tmp_path / "runs").rglob("*.ckpt"))) >= 2
