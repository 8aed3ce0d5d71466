"""Streamed training sources: lazy loading with filters, batches per mode, no duplicates, epochs, simulated ranks,
and the data module's streaming path end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightembed.data import MultiDatasetDataModule, PairSource, load_pairs
from lightembed.data.collators import normalize_text
from lightembed.data.pair_sources import stream_pairs
from lightembed.data.streaming import StreamingPairBatches


@pytest.fixture
def root(tmp_path: Path) -> Path:
    rows_a = [{"sentence1": f"anchor {i % 12}", "sentence2": f"positive {i}", "label": i % 2} for i in range(48)]
    rows_b = [
        {"premise": f"premise {i}", "hypothesis": f"hypothesis {i}", "label": ["entailment", "neutral"][i % 3 == 0]}
        for i in range(36)
    ]
    rows_c = [{"anchor": f"query {i}", "positive": f"doc {i}", "negative": f"other {i}"} for i in range(20)]
    for name, rows in (("a", rows_a), ("b", rows_b), ("c", rows_c)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _streams(root: Path) -> dict:
    return {
        "a": stream_pairs(PairSource("a.jsonl", where={"label": 1}, streaming=True), str(root), name="a"),
        "b": stream_pairs(PairSource("b.jsonl", format="nli_entailment_pairs", streaming=True), str(root), name="b"),
    }


def _source(row: dict) -> str:
    return row["anchor"].split()[0]  # "anchor" (a) or "premise" (b)


def _no_duplicate_text(batch: list[dict]) -> bool:
    keys = [normalize_text(row[f]) for row in batch for f in row]
    return len(keys) == len(set(keys))


def test_stream_pairs_filters_and_converts(root):
    a = list(_streams(root)["a"])
    assert len(a) == 24 and a[0] == {"anchor": "anchor 1", "positive": "positive 1"}
    b = list(_streams(root)["b"])
    assert len(b) == 24 and all(r["anchor"].startswith("premise") for r in b)  # neutral rows (i % 3 == 0) dropped
    c = list(stream_pairs(PairSource("c.jsonl", format="triplets", streaming=True, limit=5), str(root)))
    assert len(c) == 5 and set(c[0]) == {"anchor", "positive", "negative"}


def test_stream_pairs_errors(root):
    with pytest.raises(ValueError, match=r"(?s)missing column\(s\) \['sentence1', 'sentence2'\].*training source 'x'"):
        stream_pairs(PairSource("c.jsonl", streaming=True), str(root), name="x")
    with pytest.raises(ValueError, match="cannot stream"):
        PairSource("b.jsonl", format="nli_triplets", streaming=True)
    bad = root / "bad.jsonl"
    bad.write_text(json.dumps({"sentence1": "a", "sentence2": " "}) + "\n")
    with pytest.raises(ValueError, match="empty or whitespace-only text in column 'sentence2'"):
        list(stream_pairs(PairSource("bad.jsonl", streaming=True), str(root)))
    assert list(stream_pairs(PairSource("bad.jsonl", streaming=True), str(root), on_bad_row="skip")) == []


@pytest.mark.parametrize("interleave", ["round_robin", "proportional"])
def test_streamed_single_batches(root, interleave):
    batches = list(StreamingPairBatches(_streams(root), 4, interleave=interleave, shuffle_buffer=16, seed=1))
    assert batches and all(len(b) == 4 for b in batches)
    for batch in batches:
        assert len({_source(r) for r in batch}) == 1
        assert _no_duplicate_text(batch)
    counts = {s: sum(_source(b[0]) == s for b in batches) for s in ("anchor", "premise")}
    if interleave == "round_robin":
        assert abs(counts["anchor"] - counts["premise"]) <= 1  # taken in turn until one runs out
    else:
        assert counts["anchor"] >= 4 and counts["premise"] >= 4


def test_streamed_mixed_batches(root):
    batches = list(StreamingPairBatches(_streams(root), 5, mode="mixed", shuffle_buffer=16))
    assert len(batches) >= 5
    for batch in batches:
        assert len(batch) == 5 and len({_source(r) for r in batch}) == 2 and _no_duplicate_text(batch)
    with pytest.raises(ValueError, match="at least two datasets"):
        StreamingPairBatches({"a": _streams(root)["a"]}, 4, mode="mixed")


def test_streamed_epochs_are_deterministic_and_differ(root):
    def epoch(e, seed=0):
        batches = StreamingPairBatches(_streams(root), 4, shuffle_buffer=16, seed=seed)
        batches.set_epoch(e)
        return list(batches)

    assert epoch(0) == epoch(0)
    assert epoch(0) != epoch(1)
    assert epoch(0) != epoch(0, seed=1)
    batches = StreamingPairBatches(_streams(root), 4, shuffle_buffer=16)
    assert list(batches) == epoch(0) and list(batches) == epoch(1)  # each iteration is the next epoch


def test_streamed_ranks_are_disjoint(root):
    seen = []
    for rank in range(2):
        batches = StreamingPairBatches(_streams(root), 3, shuffle_buffer=16, rank=rank, world_size=2, drop_last=False)
        seen.append({r["positive"] for b in batches for r in b})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    everything = {r["positive"] for s in _streams(root).values() for r in s}
    assert seen[0] | seen[1] <= everything


def test_data_module_streaming_path(root, tiny_bert_dir):
    import lightning as L

    from lightembed.encoder import EncoderSettings
    from lightembed.losses import InBatchNegativesLoss
    from lightembed.stages import ContrastiveModule

    dm = MultiDatasetDataModule(
        train={
            "a": {"source": "a.jsonl", "where": {"label": 1}, "streaming": True},
            "c": {"source": "c.jsonl", "format": "triplets"},  # read in memory, iterated like the streamed one
        },
        batching="mixed",
        batch_size=4,
        data_root=str(root),
        tokenizer=str(tiny_bert_dir),
        max_length=16,
        shuffle_buffer=8,
    )
    dm.setup("fit")
    assert isinstance(dm.train_dataset, StreamingPairBatches)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"anchor", "positive", "anchor_ids", "positive_ids"}  # mixed: negatives dropped
    assert batch["anchor"]["input_ids"].shape[0] == 4
    with pytest.raises(ValueError, match="no precomputed hashes"):
        dm.train_hashes()

    module = ContrastiveModule(EncoderSettings(backbone=str(tiny_bert_dir), max_length=16), loss=InBatchNegativesLoss())
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_a_source_that_cannot_fill_a_batch_ends_with_a_warning(root, caplog):
    (root / "same.jsonl").write_text(
        "".join(json.dumps({"sentence1": "one anchor", "sentence2": f"positive {i}"}) + "\n" for i in range(60))
    )
    streams = {"same": stream_pairs(PairSource("same.jsonl", streaming=True), str(root)), "a": _streams(root)["a"]}
    with caplog.at_level("WARNING", logger="lightembed.data.streaming"):
        batches = list(StreamingPairBatches(streams, 4, interleave="proportional", shuffle_buffer=0))
    assert "streamed source 'same'" in caplog.text
    assert batches and all(_source(b[0]) == "anchor" and _no_duplicate_text(b) for b in batches)


def test_load_pairs_and_stream_pairs_reject_the_same_bad_row(root):
    rows = [{"sentence1": f"s{i}", "sentence2": f"t{i}", "label": i % 2} for i in range(6)]
    rows[2]["sentence2"] = ""  # a row that `where` would drop is still a bad row, on both paths
    (root / "bad_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"source": "bad_pairs.jsonl", "where": {"label": 1}}
    with pytest.raises(ValueError) as in_memory:
        load_pairs(PairSource(**spec), str(root))
    with pytest.raises(ValueError) as streamed:
        list(stream_pairs(PairSource(**spec, streaming=True), str(root)))
    expected = f"empty or whitespace-only text in column 'sentence2' at line 3 of {root / 'bad_pairs.jsonl'}"
    assert str(in_memory.value).startswith(expected) and str(streamed.value).startswith(expected)
    assert str(in_memory.value).replace(" (1 such row(s) in all)", "") == str(streamed.value)
    kept = list(stream_pairs(PairSource(**spec, streaming=True), str(root), on_bad_row="skip"))
    assert kept == load_pairs(PairSource(**spec), str(root), on_bad_row="skip").to_list()


def test_streamed_nli_labels_are_checked_like_in_memory(root):
    rows = [
        {"premise": "p0", "hypothesis": "h0", "label": "entailment"},
        {"premise": "p1", "hypothesis": "h1", "label": "-"},  # SNLI's "no gold label"
        {"premise": "p2", "hypothesis": "h2", "label": "Entailment "},
    ]
    (root / "nli_bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"source": "nli_bad.jsonl", "format": "nli_entailment_pairs"}
    with pytest.raises(ValueError, match="bad NLI label '-' in column 'label'"):
        load_pairs(PairSource(**spec), str(root))
    with pytest.raises(ValueError, match="bad NLI label '-' in column 'label'"):
        list(stream_pairs(PairSource(**spec, streaming=True), str(root)))
    streamed = list(stream_pairs(PairSource(**spec, streaming=True), str(root), on_bad_row="skip"))
    assert streamed == load_pairs(PairSource(**spec), str(root), on_bad_row="skip").to_list()
    assert [r["anchor"] for r in streamed] == ["p0", "p2"]
