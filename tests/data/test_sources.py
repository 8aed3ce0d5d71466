"""Sources: local formats, data root resolution, Hub ids (faked), errors that name the file and row, and the same
checks and messages when a source is streamed."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import datasets
import pandas as pd
import pytest

from lightembed.data import sources
from lightembed.data.sources import (
    DATA_ROOT_ENV,
    bad_row_message,
    load_source,
    resolve_data_root,
    resolve_source,
    source_fingerprint,
    stream_source,
)

STS = ["sentence1", "sentence2", "score"]


@pytest.fixture
def sts_rows(fixtures_dir) -> list[dict]:
    return pd.read_json(fixtures_dir / "sts_tiny.jsonl", lines=True).to_dict("records")


def test_jsonl_csv_parquet_json_give_equal_datasets(fixtures_dir, tmp_path, sts_rows):
    parquet = tmp_path / "sts.parquet"
    pd.DataFrame(sts_rows).to_parquet(parquet, index=False)
    array_json = tmp_path / "sts.json"
    array_json.write_text(json.dumps(sts_rows), encoding="utf-8")

    reference = load_source(str(fixtures_dir / "sts_tiny.jsonl"), STS).to_list()
    assert len(reference) == 12
    for path in (fixtures_dir / "sts_tiny.csv", parquet, array_json):
        ds = load_source(str(path), STS)
        assert ds.column_names == STS
        assert ds.to_list() == reference, path


def test_txt_equals_jsonl_with_text_column(tmp_path, write_jsonl):
    lines = ["first line of text", "second line", "a third one"]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in lines])
    assert load_source(str(tmp_path / "corpus.txt"), ["text"]).to_list() == [{"text": t} for t in lines]
    assert load_source(str(tmp_path / "corpus.jsonl"), ["text"]).to_list() == [{"text": t} for t in lines]


def test_keeps_only_requested_columns_in_order(fixtures_dir):
    ds = load_source(str(fixtures_dir / "sts_tiny.jsonl"), ["score", "sentence1"])
    assert ds.column_names == ["score", "sentence1"]


def test_data_root_option_and_env_var(fixtures_dir, tmp_path, monkeypatch, write_jsonl):
    option_root, env_root = tmp_path / "option", tmp_path / "env"
    (option_root / "sts").mkdir(parents=True)
    (env_root / "sts").mkdir(parents=True)
    shutil.copy(fixtures_dir / "sts_tiny.jsonl", option_root / "sts" / "tiny.jsonl")
    write_jsonl(env_root / "sts" / "tiny.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 1.0}])
    monkeypatch.chdir(tmp_path)

    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert resolve_data_root(None) is None
    assert len(load_source("sts/tiny.jsonl", STS, data_root=str(option_root))) == 12

    monkeypatch.setenv(DATA_ROOT_ENV, str(env_root))
    assert resolve_data_root(None) == env_root
    assert len(load_source("sts/tiny.jsonl", STS)) == 1
    assert len(load_source("sts/tiny.jsonl", STS, data_root=str(option_root))) == 12  # the option wins


def test_relative_to_cwd_and_absolute(fixtures_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    shutil.copy(fixtures_dir / "sts_tiny.jsonl", tmp_path / "here.jsonl")
    monkeypatch.chdir(tmp_path)
    assert resolve_source("here.jsonl").files == ((tmp_path / "here.jsonl").resolve(),)
    assert resolve_source("./here.jsonl").files == ((tmp_path / "here.jsonl").resolve(),)
    assert resolve_source(str(tmp_path / "here.jsonl")).is_local


def test_directory_picks_split_files(tmp_path, write_jsonl):
    row = {"sentence1": "a", "sentence2": "b", "score": 1.0}
    write_jsonl(tmp_path / "sts" / "train.jsonl", [row] * 3)
    write_jsonl(tmp_path / "sts" / "validation.jsonl", [row] * 2)
    assert len(load_source("sts", STS, split="train", data_root=str(tmp_path))) == 3
    assert len(load_source("sts", STS, split="validation", data_root=str(tmp_path))) == 2
    with pytest.raises(FileNotFoundError, match=r"splits \['train', 'validation'\] but none for split 'test'"):
        resolve_source("sts", split="test", data_root=str(tmp_path))

    write_jsonl(tmp_path / "shards" / "train-00000-of-00002.jsonl", [row])
    write_jsonl(tmp_path / "shards" / "train-00001-of-00002.jsonl", [row] * 2)
    assert len(load_source("shards", STS, data_root=str(tmp_path))) == 3

    write_jsonl(tmp_path / "unsplit" / "all.jsonl", [row] * 4)  # not named after a split: used for any split
    assert len(load_source("unsplit", STS, split="test", data_root=str(tmp_path))) == 4


def test_glob_concatenates_in_sorted_order(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "part-2.jsonl", [{"text": "c"}])
    write_jsonl(tmp_path / "part-1.jsonl", [{"text": "a"}, {"text": "b"}])
    assert load_source(str(tmp_path / "part-*.jsonl"), ["text"])["text"][:] == ["a", "b", "c"]


def test_mixed_formats_are_an_error(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "mixed" / "a.jsonl", [{"text": "a"}])
    (tmp_path / "mixed" / "b.csv").write_text("text\nb\n")
    with pytest.raises(ValueError, match="mixes file formats"):
        resolve_source(str(tmp_path / "mixed"))


@pytest.mark.parametrize("source", ["missing.jsonl", "./missing", "~/no-such-folder-xyz/a", "nope/*.jsonl", "a/b/c"])
def test_missing_path_lists_tried_paths(source, tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        resolve_source(source, data_root=str(tmp_path / "root"))
    message = str(info.value)
    assert str(tmp_path / "root") in message and str(tmp_path) in message
    assert DATA_ROOT_ENV in message or "data root" in message


def test_missing_path_without_root_mentions_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=DATA_ROOT_ENV):
        resolve_source("sts/missing.jsonl")


@pytest.mark.parametrize(
    ("source", "hub_id", "config"),
    [("sentence-transformers/stsb", "sentence-transformers/stsb", None), ("nyu-mll/glue:mrpc", "nyu-mll/glue", "mrpc")],
)
def test_hub_ids(source, hub_id, config, tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_source(source)
    assert (resolved.is_local, resolved.hub_id, resolved.hub_config) == (False, hub_id, config)


def test_local_folder_shadows_hub_id(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "sentence-transformers" / "stsb" / "train.jsonl", [{"text": "x"}])
    assert resolve_source("sentence-transformers/stsb", data_root=str(tmp_path)).is_local


def test_hub_load_is_checked_like_local(monkeypatch, tmp_path):
    """The Hub is never contacted: datasets.load_dataset is replaced and its call recorded."""
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"sentence1": ["a", " "], "sentence2": ["b", "c"], "label": [1, 0]})

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources.datasets, "load_dataset", fake_load_dataset)
    ds = load_source("nyu-mll/glue:mrpc", ["sentence1", "label"], split="validation", on_bad_row="skip")
    assert calls == [("nyu-mll/glue", "mrpc", "validation")]
    assert ds.to_list() == [{"sentence1": "a", "label": 1}]
    with pytest.raises(ValueError, match=r"row 1 \(0-based\) of Hub dataset 'nyu-mll/glue'"):
        load_source("nyu-mll/glue:mrpc", ["sentence1"], split="validation")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['score'\]"):
        load_source("nyu-mll/glue:mrpc", ["sentence1", "score"])


def test_missing_column_names_file_expected_and_found(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"sentence1": "a", "text_b": "b", "score": 1.0}])
    with pytest.raises(ValueError) as info:
        load_source(str(path), STS)
    message = str(info.value)
    assert str(path) in message and "['sentence2']" in message
    assert "expected columns ['sentence1', 'sentence2', 'score']" in message
    assert "found ['sentence1', 'text_b', 'score']" in message


@pytest.mark.parametrize("bad", ["", "   \t ", None])
def test_empty_text_names_file_and_row(tmp_path, bad, write_jsonl):
    rows = [{"sentence1": "a", "sentence2": "b", "score": 1.0} for _ in range(4)]
    rows[2]["sentence2"] = bad
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(ValueError) as info:
        load_source(str(path), STS)
    message = str(info.value)
    assert str(path) in message and "line 3 of" in message and "'sentence2'" in message
    assert "on_bad_row='skip'" in message


def test_skip_mode_drops_and_counts(tmp_path, caplog, write_jsonl):
    rows = [{"sentence1": f"s{i}", "sentence2": "b", "score": float(i)} for i in range(6)]
    rows[1]["sentence1"] = " "
    rows[3]["score"] = 9.0
    rows[4]["score"] = None
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="lightembed.data.sources"):
        ds = load_source(str(path), STS, score_column="score", score_range=(0.0, 5.0), on_bad_row="skip")
    assert ds["sentence1"][:] == ["s0", "s2", "s5"]
    assert "skipped 3 of 6 rows" in caplog.text


def test_score_out_of_range_names_file_and_row(tmp_path, write_jsonl):
    rows = [{"sentence1": "a", "sentence2": "b", "score": s} for s in (0.0, 5.0, 5.5, -1.0)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(ValueError) as info:
        load_source(str(path), STS, score_column="score", score_range=(0.0, 5.0))
    message = str(info.value)
    assert str(path) in message and "line 3 of" in message and "score_range [0.0, 5.0]" in message
    assert "2 such row(s)" in message
    assert len(load_source(str(path), STS, score_column="score")) == 4  # no range, no check


def test_missing_score_is_an_error(tmp_path, write_jsonl):
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 1.0}, {"sentence1": "c", "sentence2": "d"}]
    )
    with pytest.raises(ValueError, match=r"non-finite value in score column 'score' at line 2 of"):
        load_source(str(path), STS, score_column="score")


def test_bad_row_in_second_file_of_glob_is_located(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "part-1.jsonl", [{"text": "a"}, {"text": "b"}])
    second = write_jsonl(tmp_path / "part-2.jsonl", [{"text": "c"}, {"text": ""}])
    with pytest.raises(ValueError, match=rf"line 2 of {second}"):
        load_source(str(tmp_path / "part-*.jsonl"), ["text"])


def test_malformed_jsonl_names_the_file(tmp_path, write_jsonl):
    good = write_jsonl(tmp_path / "a-good.jsonl", [{"text": "a"}])
    bad = tmp_path / "b-bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": "b"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=f"could not read {bad}"):
        load_source(str(bad), ["text"])
    with pytest.raises(ValueError, match=f"could not read {bad}"):
        load_source(str(tmp_path / "*.jsonl"), ["text"])
    assert len(load_source(str(good), ["text"])) == 1


def test_option_errors(fixtures_dir):
    path = str(fixtures_dir / "sts_tiny.jsonl")
    with pytest.raises(ValueError, match="on_bad_row"):
        load_source(path, STS, on_bad_row="ignore")
    with pytest.raises(ValueError, match="score_range needs score_column"):
        load_source(path, STS, score_range=(0, 5))
    with pytest.raises(ValueError, match="should hold text"):
        load_source(path, STS, text_columns=["score"])


def test_fingerprint(fixtures_dir, monkeypatch, tmp_path):
    path = fixtures_dir / "sts_tiny.jsonl"
    local = source_fingerprint(str(path))
    assert local["kind"] == "local"
    assert local["files"] == [
        {
            "path": str(path.resolve()),
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    ]
    monkeypatch.chdir(tmp_path)
    hub = source_fingerprint("nyu-mll/glue:mrpc", split="validation")
    assert hub == {
        "source": "nyu-mll/glue:mrpc",
        "kind": "hub",
        "id": "nyu-mll/glue",
        "config": "mrpc",
        "split": "validation",
    }


def test_real_stsb_validation_through_data_root(shared_data):
    ds = load_source("sts/stsb/validation.jsonl", STS, data_root=str(shared_data), score_column="score")
    assert len(ds) == 1500
    assert len(load_source("sts/stsb", STS, split="validation", data_root=str(shared_data))) == 1500


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"sentence1": "  "}, "empty or whitespace-only text in column 'sentence1'"),
        ({"score": None}, "missing or non-finite value in score column 'score'"),
        ({"score": 9.0}, "value outside score_range [0.0, 5.0] in column 'score'"),
    ],
)
def test_in_memory_and_streamed_reading_reject_the_same_bad_row_with_the_same_message(
    tmp_path, write_jsonl, bad, problem
):
    rows = [{"sentence1": f"s{i}", "sentence2": "b", "score": 1.0} for i in range(8)]
    rows[5].update(bad)  # row 1 of the second file
    write_jsonl(tmp_path / "part-1.jsonl", rows[:4])
    second = write_jsonl(tmp_path / "part-2.jsonl", rows[4:])
    options = {"text_columns": ["sentence1", "sentence2"], "score_column": "score", "score_range": (0.0, 5.0)}
    source = str(tmp_path / "part-*.jsonl")
    with pytest.raises(ValueError) as in_memory:
        load_source(source, STS, **options)
    with pytest.raises(ValueError) as streamed:
        list(stream_source(source, STS, **options).shuffle(seed=0, buffer_size=8))  # rows met out of order
    location = f"line 2 of {second}"
    assert str(in_memory.value) == bad_row_message(problem, location, count=1)
    assert str(streamed.value) == bad_row_message(problem, location)  # a stream does not count its bad rows
    assert str(in_memory.value).replace(" (1 such row(s) in all)", "") == str(streamed.value)

    assert len(load_source(source, STS, **options, on_bad_row="skip")) == 7
    assert len(list(stream_source(source, STS, **options, on_bad_row="skip"))) == 7


def test_streamed_source_checks_columns_like_load_source(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"sentence1": "a", "text_b": "b", "score": 1.0}])
    with pytest.raises(ValueError) as in_memory:
        load_source(str(path), STS)
    with pytest.raises(ValueError) as streamed:
        stream_source(str(path), STS)
    assert str(in_memory.value) == str(streamed.value)
    assert "missing column(s) ['sentence2']" in str(streamed.value)
