"""Streamed corpora (Wikipedia layout): sentences and packed blocks, seeds, DDP ranks and workers, Hub ids, errors."""

from __future__ import annotations

import json
import traceback
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightembed.data.article_stream import pack_blocks, shuffled, split_sentences
from lightembed.data.corpus import CorpusDataModule, special_tokens_around

NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()


def _article(shard: int, index: int) -> str:
    """Two paragraphs, three sentences, every sentence distinct and naming its article."""
    name = f"{NUMBERS[shard]} {NUMBERS[index]}"
    return (
        f"Article {name} opens with a first sentence. Its second sentence says more on {name}!\n\n"
        f"A second paragraph of article {name} ends it? Ok."
    )


def _sentences(shard: int, index: int) -> list[str]:
    name = f"{NUMBERS[shard]} {NUMBERS[index]}"
    return [
        f"Article {name} opens with a first sentence.",
        f"Its second sentence says more on {name}!",
        f"A second paragraph of article {name} ends it?",
    ]  # "Ok." is shorter than the 10-character minimum


def write_shards(folder, shards: int = 4, per_shard: int = 3, drop_text_in: int | None = None) -> list:
    """Parquet shards in the layout of wikimedia/wikipedia: <config>/train-0000X-of-0000N.parquet, id/url/title/text."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(shards):
        ids = [f"{shard}-{i}" for i in range(per_shard)]
        table = {
            "id": ids,
            "url": [f"https://en.wikipedia.org/wiki?curid={i}" for i in ids],
            "title": [f"Title {i}" for i in ids],
            "text": [_article(shard, i) for i in range(per_shard)],
        }
        if shard == drop_text_in:
            table["body"] = table.pop("text")
        path = folder / f"train-{shard:05d}-of-{shards:05d}.parquet"
        pq.write_table(pa.table(table), path)
        paths.append(path)
    return paths


WIKI1M = "hf://datasets/princeton-nlp/datasets-for-simcse/wiki1m_for_simcse.txt"
ALL_SENTENCES = [s for shard in range(4) for i in range(3) for s in _sentences(shard, i)]


@pytest.fixture(autouse=True)
def no_shutdown_sleep(monkeypatch):
    """datasets sleeps 5 s after each pass over shuffled parquet shards (a guard against an Arrow thread-shutdown
    crash, apache/arrow#45214); nothing shuts down between these passes, so the tests skip the wait."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path / "wiki" / "20231101.xx")
    return str(tmp_path / "wiki" / "20231101.xx")


@pytest.fixture
def make_stream(shards, minilm_path):
    def make(**options) -> CorpusDataModule:
        options.setdefault("train", shards)
        options.setdefault("tokenizer", str(minilm_path))
        options.setdefault("streaming", True)
        options.setdefault("shuffle_buffer", 4)
        if options.get("objective", "simcse") == "simcse":
            options.setdefault("sentence_chars", (10, 200))
        return CorpusDataModule(**options)

    return make


def _examples(dm: CorpusDataModule, rank: int = 0, world_size: int = 1) -> list:
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, max_steps=10, limit_train_batches=1.0)
    dm.setup("fit")
    key = "text" if dm.objective == "simcse" else "input_ids"
    return [row[key] for row in dm.train_dataset]


# ------------------------------------------------------------ pure parts
def test_split_sentences_on_end_punctuation_before_a_capital():
    paragraphs = ['He said "Go." Then he left. It was 5 p.m. and late', "Why? because. Fine! Done", "Tiny."]
    assert split_sentences(paragraphs, 1, 100) == [
        'He said "Go."',
        "Then he left.",
        "It was 5 p.m. and late",  # no capital after "p.m.": not cut
        "Why? because.",
        "Fine!",
        "Done",
        "Tiny.",
    ]
    assert split_sentences(paragraphs, 6, 14) == ['He said "Go."', "Then he left.", "Why? because."]


def test_pack_blocks_cuts_the_separated_stream_in_order_without_padding():
    rows = [[1, 2, 3], [4], [5, 6, 7, 8]]
    blocks = list(pack_blocks(rows, prefix=[100], suffix=[101], separator=0, max_length=5))
    # stream 1 2 3 0 4 0 5 6 7 8 0 -> bodies of 3, the last 2 ids (8 0) dropped
    assert blocks == [[100, 1, 2, 3, 101], [100, 0, 4, 0, 101], [100, 5, 6, 7, 101]]
    assert list(pack_blocks(rows, [], [], None, 4)) == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_shuffled_keeps_every_item_once_and_depends_on_the_seed():
    first = list(shuffled(range(50), 8, np.random.default_rng(0)))
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert first == list(shuffled(range(50), 8, np.random.default_rng(0)))
    assert first != list(shuffled(range(50), 8, np.random.default_rng(1)))


# ------------------------------------------------------------ SimCSE sentences
def test_streamed_sentences_in_file_order_without_shuffle(make_stream):
    assert _examples(make_stream(shuffle_buffer=0)) == ALL_SENTENCES


def test_streamed_sentences_are_shuffled_and_batched(make_stream):
    dm = make_stream(batch_size=5)
    sentences = _examples(dm)
    assert sorted(sentences) == sorted(ALL_SENTENCES) and sentences != ALL_SENTENCES
    batches = list(dm.train_dataloader())
    assert [len(b["text_ids"]) for b in batches] == [5, 5, 5, 5, 5, 5, 5, 1]
    assert batches[0]["text"]["input_ids"].shape[0] == 5


def test_same_seed_same_batches_other_seed_or_epoch_differs(make_stream):
    def batches(seed: int, epochs: int = 1) -> list[list[int]]:
        dm = make_stream(seed=seed, batch_size=4)
        _examples(dm)  # setup
        loader = dm.train_dataloader()
        return [b["text_ids"].tolist() for _ in range(epochs) for b in loader]

    first = batches(0, epochs=2)
    assert first == batches(0, epochs=2)
    assert first[:9] != batches(1)
    assert first[:9] != first[9:]  # the second epoch has another order
    assert Counter(map(tuple, first[:9])) != Counter(map(tuple, first[9:]))


@pytest.mark.parametrize("count", [4, 3], ids=["shards-per-rank", "rows-per-rank"])
def test_ranks_are_disjoint_and_cover_the_corpus(tmp_path, minilm_path, count):
    write_shards(tmp_path / "w", shards=count)
    expected = [s for shard in range(count) for i in range(3) for s in _sentences(shard, i)]
    options = dict(train=str(tmp_path / "w"), tokenizer=str(minilm_path), streaming=True, sentence_chars=(10, 200))
    rank0 = _examples(CorpusDataModule(**options), 0, 2)
    rank1 = _examples(CorpusDataModule(**options), 1, 2)
    assert rank0 and rank1 and not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == sorted(expected)


def test_dataloader_workers_share_the_shards(make_stream):
    dm = make_stream(batch_size=4, num_workers=2)
    _examples(dm)
    texts = []
    for batch in dm.train_dataloader():
        texts += [dm.tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["text"]["input_ids"]]
    assert len(texts) == len(ALL_SENTENCES)
    assert sorted(texts) == sorted(s.lower() for s in ALL_SENTENCES)  # MiniLM lowercases; spacing is the same


# ------------------------------------------------------------ MNTP blocks
def test_streamed_mntp_blocks_are_full_and_follow_the_article_stream(make_stream, tokenizer):
    dm = make_stream(objective="mntp", max_length=16, shuffle_buffer=0)
    blocks = _examples(dm)
    prefix, suffix = special_tokens_around(tokenizer)
    assert (prefix, suffix) == ([tokenizer.cls_token_id], [tokenizer.sep_token_id])
    assert blocks and all(len(b) == 16 and b[0] == prefix[0] and b[-1] == suffix[0] for b in blocks)
    assert tokenizer.pad_token_id not in {i for b in blocks for i in b}
    stream = []
    for shard in range(4):
        for index in range(3):
            stream += tokenizer(_article(shard, index).strip(), add_special_tokens=False)["input_ids"]
            stream.append(tokenizer.sep_token_id)  # BERT: [SEP] between articles
    bodies = [i for b in blocks for i in b[1:-1]]
    assert len(bodies) == len(stream) // 14 * 14 and bodies == stream[: len(bodies)]
    dm = make_stream(objective="mntp", max_length=16, batch_size=3)
    _examples(dm)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (3, 16) and bool(batch["attention_mask"].all())


def test_mntp_ranks_read_disjoint_articles(make_stream, tokenizer):
    def articles(rank: int) -> set[str]:
        blocks = _examples(make_stream(objective="mntp", max_length=12), rank, 2)
        words = tokenizer.decode([i for b in blocks for i in b[1:-1]]).split()
        return {f"{a} {b}" for w, a, b in zip(words, words[1:], words[2:], strict=False) if w == "article"}

    rank0, rank1 = articles(0), articles(1)
    assert rank0 and rank1 and not rank0 & rank1


# ------------------------------------------------------------ options and errors
def _message(err: BaseException) -> str:
    return "".join(traceback.format_exception_only(err))


def test_a_shard_without_the_text_column_is_named(tmp_path, minilm_path):
    paths = write_shards(tmp_path / "bad", drop_text_in=2)
    dm = CorpusDataModule(train=str(tmp_path / "bad"), tokenizer=str(minilm_path), streaming=True)
    with pytest.raises(ValueError, match="no column 'text'") as info:
        dm.setup("fit")
    assert str(paths[2]) in _message(info.value) and "text_column" in _message(info.value)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"shuffle_buffer": -1}, "shuffle_buffer"),
        ({"max_samples": 5}, "max_samples"),
        ({"sentence_chars": (10, 5)}, "sentence_chars"),
        ({"objective": "mntp", "sentence_chars": (10, 200)}, "sentence_chars"),
    ],
)
def test_bad_streaming_options_name_the_option(make_stream, options, match):
    with pytest.raises(ValueError, match=match):
        make_stream(**options)


def test_streaming_needs_a_step_budget(make_stream):
    dm = make_stream()
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, max_steps=-1, limit_train_batches=1.0)
    with pytest.raises(ValueError, match="max_steps"):
        dm.setup("fit")


# ------------------------------------------------------------ Hub ids, resolved without downloading
@pytest.fixture
def fake_hub(monkeypatch):
    calls = []
    rows = datasets.Dataset.from_dict({"text": ["First text here. Second text here.", "", "Third text here."]})

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return rows.to_iterable_dataset() if kwargs.get("streaming") else rows

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("streaming", [False, True], ids=["in-memory", "streamed"])
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("wikitext:wikitext-103-raw-v1", (("wikitext", "wikitext-103-raw-v1"), {"split": "train"})),
        ("wikimedia/wikipedia:20231101.en", (("wikimedia/wikipedia", "20231101.en"), {"split": "train"})),
        (
            WIKI1M,
            (
                ("text",),
                {
                    "data_files": [WIKI1M],
                    "split": "train",
                },
            ),
        ),
    ],
    ids=["wikitext-103", "wikipedia", "wiki1m"],
)
def test_hub_corpora_resolve_as_llm2vec_reads_them(fake_hub, minilm_path, source, expected, streaming):
    dm = CorpusDataModule(train=source, tokenizer=str(minilm_path), streaming=streaming, shuffle_buffer=0)
    texts = _examples(dm)
    args, kwargs = expected
    assert fake_hub[0] == (args, {**kwargs, "streaming": streaming})
    assert texts == ["First text here. Second text here.", "Third text here."]  # blank row dropped


# ------------------------------------------------------------ lightembed fit on the streamed shards
ROOT = Path(__file__).resolve().parents[2]


def _fit(stage_config: str, *extra: str) -> None:
    from lightembed.cli import cli_main

    cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/trainer/cpu.yaml"),
            "--config",
            str(ROOT / stage_config),
            *extra,
            "--trainer.max_steps",
            "2",
            "--trainer.max_epochs",
            "-1",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.check_val_every_n_epoch",
            "null",
            "--trainer.val_check_interval",
            "2",
            "--trainer.precision",
            "32-true",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )


@pytest.mark.parametrize(
    ("stage_config", "data_args"),
    [
        ("configs/stages/mntp_smollm2.yaml", ["--data.init_args.val", "null"]),
        ("configs/stages/simcse_smollm2.yaml", ["--config", str(ROOT / "configs/data/wikipedia_stream.yaml")]),
    ],
    ids=["mntp", "simcse"],
)
def test_lightembed_fit_trains_on_streamed_shards(
    shards, tiny_llama_dir, sts_file, tmp_path, monkeypatch, stage_config, data_args
):
    monkeypatch.chdir(tmp_path)
    _fit(
        stage_config,
        *data_args,
        "--model.init_args.encoder.backbone",
        str(tiny_llama_dir),
        "--model.init_args.encoder.max_length",
        "16",
        "--data.init_args.train",
        shards,
        "--data.init_args.format",
        "lines",
        "--data.init_args.streaming",
        "true",
        "--data.init_args.shuffle_buffer",
        "8",
        "--data.init_args.sts_val",
        json.dumps({"tiny": str(sts_file)}),
        "--data.init_args.batch_size",
        "4",
        "--trainer.logger.init_args.name",
        "streamed",
    )
    run = tmp_path / "checkpoints" / "streamed" / "version_0"
    assert (run / "export" / "lightembed.json").is_file()
    assert [p.name for p in (run / "checkpoints").glob("best-*.ckpt")] == ["best-step=2.ckpt"]  # two steps ran
    assert "streaming: true" in (run / "config.yaml").read_text()
