"""Corpus data: WikiText cleaning, sentences (SimCSE) and blocks (MNTP), validation loaders, caching, errors."""

from __future__ import annotations

import traceback

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from lightembed.data.collators import IGNORE_INDEX, SentenceCollator
from lightembed.data.corpus import (
    TEXT_VAL_NAME,
    CorpusDataModule,
    clean_lines,
    is_wikitext_heading,
    read_wikitext_lines,
    special_tokens_around,
)
from lightembed.data.pairs import PairDataModule
from lightembed.data.samplers import EpochRandomSampler

WIKITEXT = """\

 = Valkyria Chronicles III =

 Senjō no Valkyria 3 : <unk> Chronicles is a tactical role @-@ playing video game .
 The game began development in 2010 .

 = = Gameplay = =

 As with previous <unk> Chronicles games , the player controls a squad .
 = = = Plot summary = = =
   Indented paragraph with trailing spaces .<TRAIL>

 An equation a = b = c stays .
""".replace("<TRAIL>", "   ")

PARAGRAPHS = [
    "Senjō no Valkyria 3 : <unk> Chronicles is a tactical role @-@ playing video game .",
    "The game began development in 2010 .",
    "As with previous <unk> Chronicles games , the player controls a squad .",
    "Indented paragraph with trailing spaces .",
    "An equation a = b = c stays .",
]

SENTENCES = [f"sentence number {i} says the {w} cat sat on the mat ." for i, w in enumerate("abcdefghijklmnopqrst")]


def _full_message(err: BaseException) -> str:
    return "".join(traceback.format_exception_only(err))  # the message and its notes


@pytest.fixture(scope="module")
def llama_like_dir(tmp_path_factory):
    """A saved Llama-shaped tokenizer: BOS prepended, EOS/PAD/UNK, no mask token, `_` in the vocabulary."""
    words = sorted({w for s in SENTENCES for w in s.split()})
    vocab = ["<unk>", "<s>", "</s>", "<pad>", "_", *words]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    folder = tmp_path_factory.mktemp("llama-like")
    fast.save_pretrained(folder)
    return folder


@pytest.fixture
def corpus_dir(tmp_path, write_jsonl, sts_file):
    (tmp_path / "wiki.txt").write_text(WIKITEXT, encoding="utf-8")
    (tmp_path / "lines.txt").write_text("\n".join(SENTENCES[:10]) + "\n\n   \n", encoding="utf-8")
    (tmp_path / "heldout.txt").write_text("\n".join(SENTENCES[10:]) + "\n", encoding="utf-8")
    write_jsonl(tmp_path / "rows.jsonl", [{"body": s, "id": i} for i, s in enumerate(SENTENCES)])
    (tmp_path / "sts.jsonl").write_text(sts_file.read_text())
    return tmp_path


@pytest.fixture
def make_dm(corpus_dir, minilm_path):
    def make(**options) -> CorpusDataModule:
        options.setdefault("tokenizer", str(minilm_path))
        options.setdefault("data_root", str(corpus_dir))
        return CorpusDataModule(**options)

    return make


# ------------------------------------------------------------------ cleaning
def test_wikitext_cleaning_drops_headings_and_blanks():
    assert clean_lines(WIKITEXT.splitlines(), "wikitext") == PARAGRAPHS
    kept = clean_lines(WIKITEXT.splitlines(), "lines")  # lines: only blanks dropped
    assert "= Valkyria Chronicles III =" in kept and "= = = Plot summary = = =" in kept
    assert clean_lines([None, "  x  ", ""]) == ["x"]


@pytest.mark.parametrize(
    ("line", "heading"),
    [
        (" = Title = ", True),
        (" = = Sub = = ", True),
        (" = = = Sub sub = = = ", True),
        (" = Robert Boulter = \n", True),
        (" = = Unbalanced = ", False),
        (" a = b = c ", False),
        (" = x", False),
        (" == ", False),
        ("", False),
    ],
)
def test_is_wikitext_heading(line, heading):
    assert is_wikitext_heading(line) is heading


def test_read_wikitext_lines(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text(WIKITEXT, encoding="utf-8")
    assert read_wikitext_lines(path) == PARAGRAPHS


@pytest.mark.parametrize("content", ["", "\n \n", " = Only = \n\n = = Headings = = \n"])
def test_read_wikitext_lines_without_text_names_the_file(tmp_path, content):
    path = tmp_path / "headings.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="headings.txt"):
        read_wikitext_lines(path)


# ------------------------------------------------------------------ simcse: sentences
def test_sentences_mode_rows_and_batches(make_dm, minilm_path):
    dm = make_dm(train="lines.txt", batch_size=4)
    dm.setup("fit")
    assert dm.train_dataset.column_names == ["text"]
    assert list(dm.train_dataset["text"]) == SENTENCES[:10]  # blank lines dropped, order kept
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochRandomSampler) and len(loader) == 3
    batch = next(iter(loader))
    assert set(batch) == {"text", "text_ids"}
    assert {"input_ids", "attention_mask"} <= set(batch["text"])
    assert batch["text"]["input_ids"].shape[0] == 4 and batch["text_ids"].shape == (4,)
    assert len(set(batch["text_ids"].tolist())) == 4  # four different sentences
    assert dm.val_names == [] and dm.val_dataloader() == []


def test_wikitext_format_and_max_samples(make_dm):
    dm = make_dm(train="wiki.txt", format="wikitext", max_samples=3)
    dm.setup("fit")
    assert list(dm.train_dataset["text"]) == PARAGRAPHS[:3]
    full = make_dm(train="wiki.txt", format="wikitext", max_samples=100)
    full.setup("fit")
    assert len(full.train_dataset) == len(PARAGRAPHS)


def test_jsonl_with_text_column(make_dm):
    dm = make_dm(train="rows.jsonl", text_column="body", max_samples=5)
    dm.setup("fit")
    assert list(dm.train_dataset["text"]) == SENTENCES[:5]
    with pytest.raises(ValueError, match="missing column"):
        make_dm(train="rows.jsonl").setup("fit")


def test_sentence_collator_marks_duplicates(tokenizer):
    batch = SentenceCollator(tokenizer, max_length=6)(["A cat.", {"text": "a  CAT."}, "word " * 20])
    ids = batch["text_ids"].tolist()
    assert ids[0] == ids[1] != ids[2]
    assert batch["text"]["input_ids"].shape == (3, 6)


# ------------------------------------------------------------------ mntp: chunks
def test_mntp_blocks_have_max_length_and_follow_the_token_stream(make_dm, tokenizer):
    dm = make_dm(train="lines.txt", objective="mntp", max_length=16, batch_size=2)
    dm.setup("fit")
    blocks = [list(ids) for ids in dm.train_dataset["input_ids"]]
    stream = [i for s in SENTENCES[:10] for i in tokenizer(s, add_special_tokens=False)["input_ids"]]
    body = 16 - 2  # [CLS] body [SEP]
    assert len(blocks) == len(stream) // body  # the last partial block is dropped
    assert all(len(b) == 16 for b in blocks)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert all(b[0] == cls and b[-1] == sep for b in blocks)
    assert [i for b in blocks for i in b[1:-1]] == stream[: len(blocks) * body]

    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 16) and batch["attention_mask"].all()
    selected = batch["labels"] != IGNORE_INDEX
    assert selected.any() and not selected[:, 0].any() and not selected[:, -1].any()


def test_mntp_blocks_start_with_bos_and_mask_with_underscore(make_dm, llama_like_dir):
    dm = make_dm(train="lines.txt", objective="mntp", tokenizer=str(llama_like_dir), max_length=8, batch_size=4)
    dm.setup("fit")
    tok = dm.tokenizer
    assert special_tokens_around(tok) == ([tok.bos_token_id], [])
    blocks = [list(ids) for ids in dm.train_dataset["input_ids"]]
    stream = [i for s in SENTENCES[:10] for i in tok(s, add_special_tokens=False)["input_ids"]]
    assert len(blocks) == len(stream) // 7 and all(len(b) == 8 and b[0] == tok.bos_token_id for b in blocks)
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    masked = batch["input_ids"][batch["labels"] != IGNORE_INDEX]
    assert (masked == tok.convert_tokens_to_ids("_")).any()


def test_mntp_max_samples_counts_blocks(make_dm):
    dm = make_dm(train="lines.txt", objective="mntp", max_length=16, max_samples=4)
    dm.setup("fit")
    assert len(dm.train_dataset) == 4


def test_chunks_are_cached_between_runs(make_dm):
    first = make_dm(train="lines.txt", objective="mntp", max_length=16)
    first.setup("fit")
    second = make_dm(train="lines.txt", objective="mntp", max_length=16)
    second.setup("fit")
    assert first.train_dataset.cache_files and first.train_dataset.cache_files == second.train_dataset.cache_files
    other = make_dm(train="lines.txt", objective="mntp", max_length=12)
    other.setup("fit")
    assert other.train_dataset.cache_files != first.train_dataset.cache_files


# ------------------------------------------------------------------ validation loaders
def test_text_and_sts_validation_loaders(make_dm, corpus_dir, minilm_path):
    dm = make_dm(train="lines.txt", objective="mntp", val="heldout.txt", sts_val={"sts": "sts.jsonl"}, max_length=16)
    assert dm.val_names == [TEXT_VAL_NAME, "sts"] and dm.text_val_index == 0 and dm.sts_val_names == ["sts"]
    dm.setup("fit")
    text_loader, sts_loader = dm.val_dataloader()
    torch.manual_seed(0)
    first = next(iter(text_loader))
    torch.manual_seed(1)
    again = next(iter(dm.val_dataloader()[0]))
    assert set(first) == {"input_ids", "attention_mask", "labels"}
    assert torch.equal(first["labels"], again["labels"]) and torch.equal(first["input_ids"], again["input_ids"])

    pairs = PairDataModule(val={"sts": "sts.jsonl"}, data_root=str(corpus_dir), tokenizer=str(minilm_path))
    pairs.setup("validate")
    expected = next(iter(pairs.val_dataloader()[0]))
    got = next(iter(sts_loader))
    assert set(got) == set(expected)
    for field in ("anchor", "positive"):
        for key, value in expected[field].items():
            assert torch.equal(got[field][key], value)
    assert torch.equal(got["score"], expected["score"])


def test_is_an_evaluation_set_source(make_dm):
    from lightembed.data.batches import EvaluationSets, evaluation_sets

    dm = make_dm(train="lines.txt", objective="mntp", val="heldout.txt", sts_val={"sts": "sts.jsonl"}, batch_size=4)
    assert isinstance(dm, EvaluationSets) and evaluation_sets(dm) is dm
    assert dm.val_names[-len(dm.sts_val_names) :] == dm.sts_val_names == ["sts"]  # the STS loaders come last
    assert dm.test_names == [] and dm.batch_size == 4


def test_sts_only_validation_and_simcse_text_val(make_dm):
    dm = make_dm(train="lines.txt", sts_val={"a": "sts.jsonl", "b": "sts.jsonl"})
    assert dm.val_names == ["a", "b"] and dm.text_val_index is None
    dm.setup("validate")
    assert dm.train_dataset is None and len(dm.val_dataloader()) == 2

    simcse = make_dm(train="lines.txt", val="heldout.txt", eval_batch_size=100)
    simcse.setup("validate")
    (loader,) = simcse.val_dataloader()
    batch = next(iter(loader))
    assert set(batch) == {"text", "text_ids"} and batch["text_ids"].shape == (10,)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"objective": "mlm"}, "objective"),
        ({"format": "markdown"}, "format"),
        ({"max_samples": 0}, "max_samples"),
        ({"max_length": 0}, "max_length"),
        ({"batch_size": 0}, "batch_size"),
        ({"mask_probability": 1.0}, "mask_probability"),
        ({"mask_strategy": "span"}, "strategy"),
        ({"val": "heldout.txt", "sts_val": {TEXT_VAL_NAME: "sts.jsonl"}}, "taken"),
    ],
)
def test_bad_options(make_dm, options, match):
    with pytest.raises(ValueError, match=match):
        make_dm(train="lines.txt", **options)


@pytest.mark.parametrize("content", ["", "\n\n", " = Only = \n\n = = Headings = = \n"])
def test_corpus_without_text_names_the_file(make_dm, corpus_dir, content):
    (corpus_dir / "empty.txt").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt") as info:
        make_dm(train="empty.txt", format="wikitext").setup("fit")
    assert "train='empty.txt'" in _full_message(info.value)


def test_val_text_error_names_the_option(make_dm, corpus_dir):
    (corpus_dir / "blank.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="blank.txt") as info:
        make_dm(train="lines.txt", val="blank.txt").setup("fit")
    assert "val='blank.txt'" in _full_message(info.value)


def test_mntp_errors(make_dm, corpus_dir, llama_like_dir):
    with pytest.raises(ValueError, match="max_length"):
        make_dm(train="lines.txt", objective="mntp", max_length=2).setup("fit")  # only [CLS] [SEP] fit
    (corpus_dir / "tiny.txt").write_text("a cat\n", encoding="utf-8")
    with pytest.raises(ValueError, match="too little text"):
        make_dm(train="tiny.txt", objective="mntp", max_length=64).setup("fit")
    with pytest.raises(ValueError, match="mask_token"):
        make_dm(
            train="lines.txt", objective="mntp", tokenizer=str(llama_like_dir), mask_token="<nope>", max_length=8
        ).setup("fit")


# ------------------------------------------------------------------ real data (optional)
def test_wikitext2_validation_file(shared_data, minilm_path):
    folder = shared_data / "corpus" / "wikitext-2"
    if not (folder / "validation.txt").is_file():
        pytest.skip("WikiText-2 copy not available")
    paragraphs = read_wikitext_lines(folder / "validation.txt")
    assert len(paragraphs) > 1000 and not any(is_wikitext_heading(p) for p in paragraphs)
    assert any("<unk>" in p for p in paragraphs)

    dm = CorpusDataModule(
        train="corpus/wikitext-2/validation.txt",
        objective="mntp",
        format="wikitext",
        data_root=str(shared_data),
        tokenizer=str(minilm_path),
        max_length=128,
        max_samples=64,
        sts_val={"stsb": "sts/stsb"},
    )
    dm.setup("fit")
    assert len(dm.train_dataset) == 64 and all(len(b) == 128 for b in dm.train_dataset["input_ids"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (32, 128)
    rate = (batch["labels"] != IGNORE_INDEX).float().mean().item()
    assert 0.15 < rate < 0.25
    assert dm.val_names == ["stsb"] and len(dm.sts_val_datasets[0]) == 1500
