"""PairDataModule end to end with a local tokenizer: formats, batch dicts, val/test names, errors, Lightning."""

from __future__ import annotations

import traceback

import lightning as L
import pytest
import torch

from lightembed.data import sources
from lightembed.data.pairs import PairDataModule
from lightembed.data.samplers import EpochRandomSampler, LengthGroupedBatchSampler


@pytest.fixture
def make_dm(tiny_bert_dir, fixtures_dir):
    def make(**options) -> PairDataModule:
        options.setdefault("tokenizer", str(tiny_bert_dir))
        options.setdefault("data_root", str(fixtures_dir))
        return PairDataModule(**options)

    return make


def _full_message(err: BaseException) -> str:
    return "".join(traceback.format_exception_only(err))  # the message and its notes


def test_scored_pairs_end_to_end(make_dm):
    dm = make_dm(
        train="sts_tiny.jsonl",
        val={"sts": "sts_tiny.jsonl", "sts_csv": "sts_tiny.csv"},
        test={"sts_test": "sts_tiny.jsonl"},
        batch_size=4,
        eval_batch_size=5,
        score_range=(0.0, 5.0),
    )
    assert dm.val_names == ["sts", "sts_csv"] and dm.test_names == ["sts_test"]
    dm.setup("fit")
    assert dm.test_datasets is None  # fit loads train and val only
    train = dm.train_dataloader()
    assert isinstance(train.sampler, EpochRandomSampler)
    batch = next(iter(train))
    assert set(batch) == {"anchor", "positive", "score", "anchor_ids", "positive_ids"}
    assert batch["anchor"]["input_ids"].shape[0] == 4 and batch["anchor"]["input_ids"].dtype == torch.int64
    assert batch["score"].shape == (4,) and batch["score"].dtype == torch.float32
    assert len(train) == 3

    val = dm.val_dataloader()
    assert len(val) == 2
    val_batches = [list(loader) for loader in val]
    assert [len(b) for b in val_batches] == [3, 3]  # 12 rows in batches of 5
    first = val_batches[0][0]
    assert first["score"].tolist() == pytest.approx([4.8, 4.6, 0.4, 4.0, 3.2])
    assert first["anchor_ids"][0] != first["positive_ids"][0]
    assert torch.equal(val_batches[0][0]["anchor"]["input_ids"], val_batches[1][0]["anchor"]["input_ids"])

    dm.setup("test")
    assert len(dm.test_dataloader()) == 1


def test_setup_is_idempotent_and_shuffle_seeded(make_dm):
    dm = make_dm(train="sts_tiny.jsonl", batch_size=4, seed=3)
    dm.setup("fit")
    loaded = dm.train_dataset
    dm.setup("fit")
    assert dm.train_dataset is loaded
    other = make_dm(train="sts_tiny.jsonl", batch_size=4, seed=3)
    other.setup("fit")
    first = next(iter(dm.train_dataloader()))["anchor"]["input_ids"]
    assert torch.equal(first, next(iter(other.train_dataloader()))["anchor"]["input_ids"])


def test_nli_triplets_and_pairs(make_dm):
    dm = make_dm(train="nli_tiny.jsonl", train_format="nli_triplets", batch_size=8)
    dm.setup("fit")
    assert len(dm.train_dataset) == 5
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"anchor", "positive", "negative", "anchor_ids", "positive_ids", "negative_ids"}
    assert batch["negative"]["input_ids"].shape[0] == 5

    scores = {"entailment": 1.0, "neutral": 0.5}
    dm = make_dm(train="nli_tiny.jsonl", train_format="nli_scored_pairs", nli_scores=scores)
    dm.setup("fit")
    assert len(dm.train_dataset) == 8 and set(dm.train_dataset["score"][:]) == {1.0, 0.5}

    dm = make_dm(train="nli_tiny.jsonl", train_format="nli_entailment_pairs")
    dm.setup("fit")
    assert dm.train_dataset.column_names == ["anchor", "positive"]
    assert len(dm.train_dataset) == 4  # the entailment rows only


def test_old_nli_pairs_name_reads_as_scored_pairs_with_a_warning(make_dm):
    with pytest.warns(FutureWarning, match="train_format='nli_pairs' is deprecated: it reads as 'nli_scored_pairs'"):
        dm = make_dm(train="nli_tiny.jsonl", train_format="nli_pairs", nli_scores={"entailment": 1.0, "neutral": 0.5})
    assert dm.train_format == "nli_scored_pairs"
    dm.setup("fit")
    assert len(dm.train_dataset) == 8 and set(dm.train_dataset["score"][:]) == {1.0, 0.5}


def test_is_an_evaluation_set_source(make_dm):
    from lightembed.data.batches import EvaluationSets, evaluation_sets

    dm = make_dm(val={"a": "sts_tiny.jsonl", "b": "sts_tiny.csv"}, test={"t": "sts_tiny.jsonl"}, batch_size=4)
    assert isinstance(dm, EvaluationSets) and evaluation_sets(dm) is dm
    assert dm.val_names == dm.sts_val_names == ["a", "b"] and dm.test_names == ["t"] and dm.batch_size == 4


def test_pairs_and_triplets_with_column_mapping(make_dm, tmp_path, write_jsonl):
    write_jsonl(tmp_path / "qd.jsonl", [{"query": f"q{i}", "doc": f"d{i}", "bad": f"n{i}"} for i in range(6)])
    dm = make_dm(
        train="qd.jsonl", train_format="pairs", columns={"query": "anchor", "doc": "positive"}, data_root=str(tmp_path)
    )
    dm.setup("fit")
    assert dm.train_dataset.column_names == ["anchor", "positive"]

    dm = make_dm(
        train=str(tmp_path / "qd.jsonl"),
        train_format="triplets",
        columns={"query": "anchor", "doc": "positive", "bad": "negative"},
    )
    dm.setup("fit")
    assert dm.train_dataset.to_list()[0] == {"anchor": "q0", "positive": "d0", "negative": "n0"}


def test_length_grouping(make_dm):
    dm = make_dm(train="sts_tiny.jsonl", batch_size=4, length_grouping=True)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, LengthGroupedBatchSampler)
    lengths = dm.train_lengths()
    anchors = dm.tokenizer(dm.train_dataset["anchor"][:])["input_ids"]
    positives = dm.tokenizer(dm.train_dataset["positive"][:])["input_ids"]
    assert lengths.tolist() == [len(a) + len(p) for a, p in zip(anchors, positives, strict=True)]
    indices = [i for b in loader.batch_sampler for i in b]
    assert sorted(indices) == list(range(12))
    assert sum(len(batch["score"]) for batch in loader) == 12


def test_option_errors(make_dm):
    with pytest.raises(ValueError, match="must map source columns to each of"):
        make_dm(train="sts_tiny.jsonl", columns={"sentence1": "anchor", "sentence2": "positive"})
    with pytest.raises(ValueError, match="score_range applies to train_format='scored_pairs'"):
        make_dm(train="nli_tiny.jsonl", train_format="nli_triplets", score_range=(0, 1))
    with pytest.raises(ValueError, match="nli_scores applies"):
        make_dm(train="sts_tiny.jsonl", nli_scores={"entailment": 1.0})
    dm = make_dm(val={"sts": "sts_tiny.jsonl"})
    dm.setup("fit")
    with pytest.raises(ValueError, match="no training source"):
        dm.train_dataloader()


def test_bad_inputs_name_the_option_file_and_row(make_dm, tmp_path, fixtures_dir, write_jsonl):
    with pytest.raises(ValueError) as info:
        make_dm(train="nli_tiny.jsonl").setup("fit")  # scored_pairs needs sentence1/sentence2/score
    message = _full_message(info.value)
    assert "nli_tiny.jsonl" in message and "missing column" in message and "train='nli_tiny.jsonl'" in message

    rows = [{"sentence1": "a", "sentence2": "b", "score": s} for s in (1.0, 2.0, 7.0)]
    write_jsonl(tmp_path / "scores.jsonl", rows)
    with pytest.raises(ValueError, match=r"line 3 of .*scores.jsonl"):
        make_dm(train=str(tmp_path / "scores.jsonl"), score_range=(0.0, 5.0)).setup("fit")
    skipping = make_dm(train=str(tmp_path / "scores.jsonl"), score_range=(0.0, 5.0), on_bad_row="skip")
    skipping.setup("fit")
    assert len(skipping.train_dataset) == 2

    write_jsonl(tmp_path / "nli.jsonl", [{"premise": "p", "hypothesis": "h", "label": -1}])
    with pytest.raises(ValueError, match="bad NLI label -1"):
        make_dm(train=str(tmp_path / "nli.jsonl"), train_format="nli_triplets").setup("fit")

    write_jsonl(tmp_path / "val.jsonl", [{"sentence1": "a", "sentence2": "", "score": 1.0}])
    with pytest.raises(ValueError) as info:
        make_dm(val={"broken": str(tmp_path / "val.jsonl")}).setup("validate")
    message = _full_message(info.value)
    assert "line 1 of" in message and "val['broken']" in message

    with pytest.raises(FileNotFoundError) as info:
        make_dm(test={"missing": "missing.jsonl"}).setup("test")
    assert str(fixtures_dir / "missing.jsonl") in _full_message(info.value)


def test_hub_val_source_uses_val_split(make_dm, fixtures_dir, monkeypatch, tmp_path):
    """A Hub id is read with val_split; datasets.load_dataset is faked so nothing is downloaded."""
    real = sources.datasets.load_dataset
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        if path in ("json", "csv", "parquet", "text"):
            return real(path, name, split=split, **kwargs)
        calls.append((path, name, split))
        return real("json", data_files=str(fixtures_dir / "sts_tiny.jsonl"), split="train")

    monkeypatch.setattr(sources.datasets, "load_dataset", fake_load_dataset)
    monkeypatch.chdir(tmp_path)
    dm = make_dm(val={"stsb": "sentence-transformers/stsb"}, val_split="dev", data_root=None)
    dm.setup("validate")
    assert calls == [("sentence-transformers/stsb", None, "dev")]
    assert len(dm.val_datasets[0]) == 12


class _Probe(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.val_batches: dict[int, int] = {}

    def training_step(self, batch, batch_idx):
        assert {"anchor", "positive", "score"} <= set(batch)
        return (self.weight * batch["score"].sum()).sum()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.val_batches[dataloader_idx] = self.val_batches.get(dataloader_idx, 0) + 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("val", [{"a": "sts_tiny.jsonl", "b": "sts_tiny.csv"}, {}])
def test_lightning_fit(make_dm, val):
    dm = make_dm(train="sts_tiny.jsonl", val=val, batch_size=4, eval_batch_size=6, length_grouping=True)
    module = _Probe()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    assert module.val_batches == ({0: 2, 1: 2} if val else {})


def test_real_stsb_through_data_root(make_dm, shared_data):
    dm = make_dm(val={"stsb": "sts/stsb"}, data_root=str(shared_data))
    dm.setup("validate")
    assert dm.val_names == ["stsb"] and len(dm.val_datasets[0]) == 1500
    batch = next(iter(dm.val_dataloader()[0]))
    assert batch["score"].shape == (64,)
