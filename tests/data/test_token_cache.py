"""Cached tokenisation of training datasets: the pretokenised collator matches the plain one, and a second run reads
the tokens back instead of tokenising again."""

from __future__ import annotations

import pytest
import torch

from lightembed.data import token_cache
from lightembed.data.collators import PairCollator
from lightembed.data.multi import MultiDatasetDataModule
from lightembed.data.token_cache import PretokenizedPairCollator, tokenize_fields

TRIPLET = ["anchor", "positive", "negative"]
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


def test_pretokenized_collator_matches_the_pair_collator(tokenizer, pair_rows):
    rows = [{"anchor": a, "positive": p, "negative": n} for a, p, n in pair_rows["nli"][:4]]
    tokens = tokenize_fields({f: [r[f] for r in rows] for f in TRIPLET}, tokenizer, max_length=8, fields=list(TRIPLET))
    with_tokens = [{**row, **{k: v[i] for k, v in tokens.items()}} for i, row in enumerate(rows)]
    expected = PairCollator(tokenizer, max_length=8)(rows)
    got = PretokenizedPairCollator(tokenizer, max_length=8)(with_tokens)
    assert set(got) == set(expected)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert set(got[key]) == set(value)
            assert all(torch.equal(got[key][k], value[k]) for k in value)
        else:
            assert torch.equal(got[key], value)


def test_tokenization_is_cached_between_runs(make_dm, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTEMBED_CACHE", str(tmp_path / "cache"))
    calls = []
    original = token_cache.tokenize_fields

    def counting(batch, **kwargs):
        calls.append(len(next(iter(batch.values()))))
        return original(batch, **kwargs)

    monkeypatch.setattr(token_cache, "tokenize_fields", counting)

    def batches(**options):
        dm = make_dm(batch_size=2, seed=3, **options)
        dm.setup("fit")
        return dm, list(dm.train_dataloader())

    _, plain = batches()
    first, cached = batches(cache_tokenization=True)
    assert calls  # tokenised once per dataset
    files = sorted((tmp_path / "cache" / "tokenized").glob("*.arrow"))
    assert [f.name.split("-")[0] for f in files] == ["nli", "para", "sts"]
    assert "anchor.input_ids" in first.train_dataset.parts[0].column_names
    calls.clear()
    _, again = batches(cache_tokenization=True)
    assert calls == []  # the second run reads the tokens back
    for a, b, c in zip(plain, cached, again, strict=True):
        for key in a:
            if isinstance(a[key], dict):
                assert all(torch.equal(a[key][k], b[key][k]) and torch.equal(a[key][k], c[key][k]) for k in a[key])
            else:
                assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    other = make_dm(batch_size=2, cache_tokenization=True, max_length=16)
    assert other.tokenization_cache_file("nli", TRIPLET) != first.tokenization_cache_file("nli", TRIPLET)
    with pytest.raises(ValueError, match="instructions"):
        make_dm(cache_tokenization=True, instructions={"anchor": "query: "})
