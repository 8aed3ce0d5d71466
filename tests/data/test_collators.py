"""PairCollator: batch fields, dynamic padding, truncation and duplicate-text ids."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightembed.data.collators import PairCollator, normalize_text


def _rows(anchors, positives, negatives=None, scores=None):
    rows = [{"anchor": a, "positive": p} for a, p in zip(anchors, positives, strict=True)]
    for i, row in enumerate(rows):
        if negatives is not None:
            row["negative"] = negatives[i]
        if scores is not None:
            row["score"] = scores[i]
    return rows


def test_batch_format(tokenizer):
    rows = _rows(["a cat", "a dog runs"], ["the cat", "a dog"], ["a car", "bikes"], [4.5, 3])
    batch = PairCollator(tokenizer)(rows)
    assert set(batch) == {"anchor", "positive", "negative", "score", "anchor_ids", "positive_ids", "negative_ids"}
    for field in ("anchor", "positive", "negative"):
        assert isinstance(batch[field], dict)
        assert {"input_ids", "attention_mask"} <= set(batch[field])
        assert batch[field]["input_ids"].shape == batch[field]["attention_mask"].shape
        assert batch[field]["input_ids"].shape[0] == 2
        assert batch[f"{field}_ids"].dtype == torch.int64 and batch[f"{field}_ids"].shape == (2,)
    assert batch["score"].dtype == torch.float32
    assert batch["score"].tolist() == [4.5, 3.0]


def test_pairs_without_negative_or_score(tokenizer):
    batch = PairCollator(tokenizer)(_rows(["a"], ["b"]))
    assert set(batch) == {"anchor", "positive", "anchor_ids", "positive_ids"}


def test_label_passes_through(tokenizer):
    rows = [{"anchor": "a", "positive": "b", "label": 2}, {"anchor": "c", "positive": "d", "label": 0}]
    batch = PairCollator(tokenizer)(rows)
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [2, 0]


def test_padding_is_dynamic_per_field(tokenizer):
    collate = PairCollator(tokenizer, max_length=64)
    short = collate(_rows(["hi", "yo"], ["ok", "a b"]))
    long_text = "the quick brown fox jumps over the lazy dog " * 3
    long = collate(_rows(["hi", long_text], ["ok", "a b"]))
    for batch in (short, long):
        for field in ("anchor", "positive"):
            mask = batch[field]["attention_mask"]
            assert mask.shape[1] == int(mask.sum(dim=1).max())  # padded to the longest, no further
    assert long["anchor"]["input_ids"].shape[1] > short["anchor"]["input_ids"].shape[1]
    assert long["positive"]["input_ids"].shape == short["positive"]["input_ids"].shape


def test_truncation(tokenizer):
    batch = PairCollator(tokenizer, max_length=8)(_rows(["word " * 50], ["short"]))
    assert batch["anchor"]["input_ids"].shape == (1, 8)


def test_ids_shared_across_fields_for_normalised_duplicates(tokenizer):
    rows = _rows(
        anchors=["A cat sits.", "A dog.", "Birds fly"],
        positives=["  a   CAT sits. ", "a dog runs", "A cat sits."],
        negatives=["a dog.", "Fish swim", "birds\tfly"],
    )
    batch = PairCollator(tokenizer)(rows)
    anchor, positive, negative = batch["anchor_ids"], batch["positive_ids"], batch["negative_ids"]
    assert len(set(anchor.tolist())) == 3 and anchor.dtype == torch.int64
    assert torch.equal(PairCollator(tokenizer)(rows[::-1])["anchor_ids"], anchor.flip(0))  # text identities, not
    # positions: the same text gets the same id in any batch (so ids gathered from DDP ranks still match)
    assert positive[0] == anchor[0] and positive[2] == anchor[0]
    assert negative[0] == anchor[1] and negative[2] == anchor[2]
    assert positive[1] not in anchor.tolist() and negative[1] not in [*anchor.tolist(), *positive.tolist()]

    texts = [t for row in rows for t in (row["anchor"], row["positive"], row["negative"])]
    ids = [i for k in range(3) for i in (anchor[k], positive[k], negative[k])]
    for t1, i1 in zip(texts, ids, strict=True):  # naive check: equal ids iff equal normalised text
        for t2, i2 in zip(texts, ids, strict=True):
            assert (i1 == i2) == (normalize_text(t1) == normalize_text(t2))


def test_inconsistent_rows_and_bad_options(tokenizer):
    collate = PairCollator(tokenizer)
    with pytest.raises(ValueError, match="row 1 of the batch"):
        collate([{"anchor": "a", "positive": "b", "negative": "c"}, {"anchor": "a", "positive": "b"}])
    with pytest.raises(ValueError, match="'positive'"):
        collate([{"anchor": "a"}])
    with pytest.raises(ValueError, match="empty list"):
        collate([])
    with pytest.raises(ValueError, match="no pad token"):
        PairCollator(SimpleNamespace(pad_token=None))
    with pytest.raises(ValueError, match="max_length"):
        PairCollator(tokenizer, max_length=0)


def test_instruction_tokens_are_excluded_from_the_pool_mask(tokenizer):
    from lightembed.data.collators import PairCollator

    instruction = "Retrieve semantically similar text: "
    collate = PairCollator(tokenizer, max_length=32, instructions={"anchor": instruction})
    batch = collate([{"anchor": "a cat sits", "positive": "a feline rests"}, {"anchor": "dogs", "positive": "hounds"}])
    anchor = batch["anchor"]
    plain = tokenizer(["a cat sits", "dogs"])["input_ids"]
    for row, ids in enumerate(plain):
        kept = anchor["input_ids"][row][anchor["pool_mask"][row].bool()].tolist()
        assert kept == ids[1:-1]  # the text's own tokens, without [CLS]/[SEP] and without the instruction
    assert "pool_mask" not in batch["positive"]
    plain_rows = [{"anchor": "a cat sits", "positive": "x"}, {"anchor": "dogs", "positive": "y"}]
    plain_batch = PairCollator(tokenizer)(plain_rows)
    assert torch.equal(batch["anchor_ids"], plain_batch["anchor_ids"])  # ids come from the texts, not the instruction


def test_instruction_for_an_unknown_field_is_an_error(tokenizer):
    from lightembed.data.collators import PairCollator

    with pytest.raises(ValueError, match="instructions"):
        PairCollator(tokenizer, instructions={"query": "x"})
