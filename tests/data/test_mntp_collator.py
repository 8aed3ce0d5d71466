"""MNTPCollator: masking rate, 80/10/10 split, all_mask, positions never masked, labels, `_` fallback, options."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from lightembed.data.collators import IGNORE_INDEX, MNTPCollator

WORDS = "the a cat dog sat on mat ran in park . , and is was big small red blue green".split()


def llama_like_tokenizer(underscore: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer shaped like Llama's: BOS prepended, EOS/PAD/UNK, no mask token, `_` in the vocab."""
    vocab = ["<unk>", "<s>", "</s>", "<pad>", *(["_"] if underscore else []), *WORDS]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _plain_ids(tokenizer, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) random ids of non-special tokens."""
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    return allowed[torch.randint(len(allowed), (batch, length), generator=generator)]


def _check_labels(batch: dict[str, torch.Tensor], original: torch.Tensor) -> torch.Tensor:
    """Labels hold the original id exactly at selected positions; elsewhere -100 and the input is unchanged."""
    selected = batch["labels"] != IGNORE_INDEX
    assert torch.equal(batch["labels"][selected], original[selected])
    assert torch.equal(batch["input_ids"][~selected], original[~selected])
    return selected


def test_masking_rate_is_close_to_probability(tokenizer):
    torch.manual_seed(0)
    ids = _plain_ids(tokenizer, 64, 64)  # 64 * 63 = 4032 eligible positions (position 0 never)
    for p in (0.15, 0.4):
        batch = MNTPCollator(tokenizer, mask_probability=p)([{"input_ids": row.tolist()} for row in ids])
        selected = _check_labels(batch, ids)
        rate = selected[:, 1:].float().mean().item()
        assert abs(rate - p) < 0.03, (p, rate)  # ~4.5 standard deviations


def test_bert_strategy_splits_80_10_10(tokenizer):
    torch.manual_seed(1)
    ids = _plain_ids(tokenizer, 128, 128, seed=1)
    collate = MNTPCollator(tokenizer, mask_probability=0.5, strategy="bert")
    batch = collate(ids.tolist())
    selected = _check_labels(batch, ids)
    n = selected.sum().item()
    chosen = batch["input_ids"][selected]
    as_mask = (chosen == tokenizer.mask_token_id).float().sum().item() / n
    unchanged = (chosen == ids[selected]).float().sum().item() / n
    random = 1 - as_mask - unchanged
    assert n > 7000
    assert abs(as_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.015 and abs(random - 0.1) < 0.015
    replaced = chosen[(chosen != tokenizer.mask_token_id) & (chosen != ids[selected])]
    assert not torch.isin(replaced, torch.tensor(tokenizer.all_special_ids)).any()  # random tokens are never special


def test_all_mask_strategy(tokenizer):
    torch.manual_seed(2)
    ids = _plain_ids(tokenizer, 16, 32)
    batch = MNTPCollator(tokenizer, mask_probability=0.3, strategy="all_mask")(ids.tolist())
    selected = _check_labels(batch, ids)
    assert selected.any()
    assert (batch["input_ids"][selected] == tokenizer.mask_token_id).all()


def test_specials_padding_and_first_token_are_never_masked(tokenizer):
    texts = ["a cat sat on the mat", "dogs", "the quick brown fox jumps over the lazy dog again and again"]
    rows = [{"input_ids": tokenizer(t)["input_ids"]} for t in texts]  # [CLS] ... [SEP], different lengths
    collate = MNTPCollator(tokenizer, mask_probability=0.95)
    specials = torch.tensor(tokenizer.all_special_ids)
    torch.manual_seed(3)
    for _ in range(50):
        batch = collate(rows)
        lengths = batch["attention_mask"].sum(dim=1)
        assert lengths.tolist() == [len(r["input_ids"]) for r in rows]
        labels = batch["labels"]
        assert (labels[:, 0] == IGNORE_INDEX).all()
        assert (labels[batch["attention_mask"] == 0] == IGNORE_INDEX).all()
        assert not torch.isin(labels, specials).any()
        padded = batch["attention_mask"] == 0
        assert (batch["input_ids"][padded] == tokenizer.pad_token_id).all()


def test_first_real_token_is_never_masked_without_bos_and_with_left_padding():
    tok = llama_like_tokenizer()
    tok.padding_side = "left"
    rows = [[5, 6, 7, 8, 9, 10], [7, 8, 9], [11, 12, 13, 14]]  # no BOS: the first token is a plain word
    collate = MNTPCollator(tok, mask_probability=0.95)
    torch.manual_seed(4)
    for _ in range(50):
        batch = collate(rows)
        mask = batch["attention_mask"]
        assert mask[:, -1].all() and not mask[1, :3].any()  # left padded
        first = mask.float().argmax(dim=1)  # index of the first real token per row
        assert (batch["labels"].gather(1, first[:, None]) == IGNORE_INDEX).all()
        assert (batch["labels"][mask == 0] == IGNORE_INDEX).all()
        assert (batch["labels"][:, -1] != IGNORE_INDEX).any()  # other positions do get selected


def test_underscore_is_the_fallback_mask_token():
    tok = llama_like_tokenizer()
    assert tok.mask_token is None
    collate = MNTPCollator(tok, mask_probability=0.5, strategy="all_mask")
    assert collate.mask_token == "_" and collate.mask_token_id == tok.convert_tokens_to_ids("_") == 4
    torch.manual_seed(5)
    rows = [tok(" ".join(WORDS))["input_ids"]] * 4  # BOS + words
    batch = collate(rows)
    selected = batch["labels"] != IGNORE_INDEX
    assert selected.any() and (batch["input_ids"][selected] == 4).all()
    assert (batch["labels"][:, 0] == IGNORE_INDEX).all()  # BOS


def test_missing_underscore_and_bad_mask_token_name_the_option(tokenizer):
    with pytest.raises(ValueError, match="mask_token"):
        MNTPCollator(llama_like_tokenizer(underscore=False))
    with pytest.raises(ValueError, match="mask_token"):
        MNTPCollator(tokenizer, mask_token="<not-a-token>")
    assert MNTPCollator(llama_like_tokenizer(), mask_token="</s>").mask_token_id == 2
    assert MNTPCollator(tokenizer, mask_token="_").mask_token_id == tokenizer.convert_tokens_to_ids("_")


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_bad_mask_probability(tokenizer, p):
    with pytest.raises(ValueError, match="mask_probability"):
        MNTPCollator(tokenizer, mask_probability=p)


def test_bad_strategy(tokenizer):
    with pytest.raises(ValueError, match="strategy"):
        MNTPCollator(tokenizer, strategy="span")


def test_empty_batch(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        MNTPCollator(tokenizer)([])


def test_global_rng_makes_masks_reproducible(tokenizer):
    rows = _plain_ids(tokenizer, 8, 32).tolist()
    collate = MNTPCollator(tokenizer)
    torch.manual_seed(7)
    first = collate(rows)
    torch.manual_seed(7)
    again = collate(rows)
    assert torch.equal(first["input_ids"], again["input_ids"]) and torch.equal(first["labels"], again["labels"])
    later = collate(rows)
    assert not torch.equal(first["labels"], later["labels"])


def test_seed_masks_each_batch_the_same_way_whatever_the_global_rng(tokenizer):
    rows = _plain_ids(tokenizer, 8, 32).tolist()
    other = _plain_ids(tokenizer, 8, 32, seed=9).tolist()
    collate = MNTPCollator(tokenizer, seed=0)
    torch.manual_seed(0)
    first = collate(rows)
    collate(other)
    torch.manual_seed(123)
    again = collate(rows)
    assert torch.equal(first["input_ids"], again["input_ids"]) and torch.equal(first["labels"], again["labels"])
    assert not torch.equal(first["labels"], MNTPCollator(tokenizer, seed=1)(rows)["labels"])


def test_a_batch_always_has_a_label(tokenizer):
    torch.manual_seed(0)
    collate = MNTPCollator(tokenizer, mask_probability=1e-6)
    for _ in range(20):
        batch = collate([tokenizer("a cat")["input_ids"]])  # [CLS] a cat [SEP]: `a` and `cat` are eligible
        selected = batch["labels"] != IGNORE_INDEX
        assert selected.sum() == 1 and selected[0, 1:3].any()
