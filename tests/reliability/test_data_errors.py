"""Bad data and bad model folders are caught when they are loaded, with one message naming the file and its line.

Each test writes a tiny bad input into ``tmp_path`` and checks what the user gets: the training data module
(what ``lightembed fit`` calls), STS evaluation (what ``lightembed evaluate`` calls) and the tokenizer loader.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lightembed.backbones import load_tokenizer
from lightembed.data import PairDataModule
from lightembed.data.sources import load_source
from lightembed.evaluation.sts import evaluate_sts

STS_COLUMNS = ["sentence1", "sentence2", "score"]


def _row(i: int, score: float | None = None) -> str:
    return json.dumps({"sentence1": f"first sentence {i}", "sentence2": f"second one {i}", "score": score or i % 6})


def _write(path: Path, lines: list[str] | bytes) -> Path:
    path.write_bytes(lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode())
    return path


class _Embedder:
    """Any object with ``encode(texts)``: evaluation must refuse bad data before encoding a single text."""

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.random.default_rng(0).normal(size=(len(texts), 4)).astype(np.float32)


def _fit_data(tmp_path: Path, **options) -> PairDataModule:
    train = _write(tmp_path / "train.jsonl", [_row(i) for i in range(6)])
    options = {"train": str(train), **options}
    data = PairDataModule(tokenizer="unused", **options)
    data.setup("fit")
    return data


# 1. A model folder without tokenizer files


def test_a_model_folder_without_tokenizer_files_is_an_error_naming_the_folder(tiny_bert_dir, tmp_path):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert_dir / name, folder / name)
    with pytest.raises(FileNotFoundError, match=r"model folder .*weights-only has no tokenizer files") as err:
        load_tokenizer(str(folder))
    assert "tokenizer.json" in str(err.value) and "vocab.txt" in str(err.value)
    assert len(load_tokenizer(str(tiny_bert_dir))) > 1000  # a folder with its tokenizer still loads


# 3. STS sets: constant scores and scores out of range, the same in fit and evaluate


def test_constant_sts_scores_are_refused_by_fit_and_evaluate_with_one_message(tmp_path):
    val = _write(tmp_path / "val.jsonl", [_row(i, score=3.0) for i in range(5)])
    constant = r"STS set .*val.jsonl has the same score \(3\) on every pair, so the Spearman .* undefined"
    with pytest.raises(ValueError, match=constant) as fit:
        _fit_data(tmp_path, val={"sts": str(val)})
    with pytest.raises(ValueError) as evaluate:
        evaluate_sts(_Embedder(), {"sts": str(val)})
    assert str(evaluate.value) == str(fit.value)


def test_an_sts_score_out_of_range_is_an_error_naming_file_and_line_in_fit_and_evaluate(tmp_path):
    val = _write(tmp_path / "val.jsonl", [_row(0), _row(1), _row(2, score=7.5), _row(3)])
    where = r"value outside score_range \[0.0, 5.0\] in column 'score' at line 3 of .*val.jsonl"
    with pytest.raises(ValueError, match=where):
        _fit_data(tmp_path, val={"sts": str(val)})
    with pytest.raises(ValueError, match=where):
        evaluate_sts(_Embedder(), {"sts": str(val)})
    # another scale is an option away, in both places
    assert len(_fit_data(tmp_path, val={"sts": str(val)}, sts_score_range=(0.0, 10.0)).val_datasets[0]) == 4
    assert evaluate_sts(_Embedder(), {"sts": str(val)}, score_range=None)[0].pairs == 4


# 8. Bytes that are not UTF-8


def test_invalid_utf8_is_found_at_load_with_its_line_and_skip_drops_the_line(tmp_path):
    rows = [_row(i).encode() for i in range(5)]
    rows[3] = b'{"sentence1": "caf\xe9", "sentence2": "x", "score": 1.0}'  # latin-1, not UTF-8
    train = _write(tmp_path / "train.jsonl", b"\n".join(rows) + b"\n")
    with pytest.raises(ValueError, match=r"not UTF-8 at line 4 of .*train.jsonl .*on_bad_row='skip'"):
        PairDataModule(train=str(train), tokenizer="unused").setup("fit")
    data = PairDataModule(train=str(train), tokenizer="unused", on_bad_row="skip")
    data.setup("fit")
    assert len(data.train_dataset) == 4 and all(isinstance(r["anchor"], str) for r in data.train_dataset)
    with pytest.raises(ValueError, match=r"not UTF-8 at line 4 of .*train.jsonl"):
        evaluate_sts(_Embedder(), {"sts": str(train)})


def test_invalid_utf8_in_a_csv_names_its_line(tmp_path):
    path = _write(tmp_path / "pairs.csv", b"sentence1,sentence2,score\na,b,1\nc,d,2\nna\xefve,e,3\n")
    with pytest.raises(ValueError, match=r"not UTF-8 at line 4 of .*pairs.csv"):
        load_source(str(path), STS_COLUMNS)


# 9. Row numbers are lines of the file


def test_a_malformed_line_deep_in_a_large_file_is_reported_at_its_line(tmp_path):
    padding = "x" * 80  # long enough rows that the JSON reader reads the file in several blocks
    lines = [json.dumps({"sentence1": f"{padding} {i}", "sentence2": "b", "score": 1.0}) for i in range(150_100)]
    lines[149_999] = lines[149_999][:-1]  # line 150000 lacks its closing brace
    path = _write(tmp_path / "big.jsonl", lines)
    with pytest.raises(ValueError, match=r"line 150000 of .*big.jsonl is not valid JSON"):
        load_source(str(path), STS_COLUMNS)


def test_a_bad_row_is_named_by_its_file_line_past_blank_lines_and_in_csv(tmp_path):
    blank_text = json.dumps({"sentence1": " ", "sentence2": "b"})
    jsonl = _write(tmp_path / "gaps.jsonl", [_row(0), "", "", _row(1), blank_text])
    with pytest.raises(ValueError, match=r"empty or whitespace-only text in column 'sentence1' at line 5 of "):
        load_source(str(jsonl), ["sentence1", "sentence2"])
    csv = _write(tmp_path / "pairs.csv", b'sentence1,sentence2\n"two\nlines",b\n\nc,d\n,e\n')
    with pytest.raises(ValueError, match=r"at line 6 of .*pairs.csv \(data row 3\)"):
        load_source(str(csv), ["sentence1", "sentence2"])


# 10. No data at all


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\n"), ("header.csv", b"sentence1,sentence2,score\n")],
)
def test_a_file_without_rows_is_one_sentence_naming_it(tmp_path, name, content):
    path = _write(tmp_path / name, content)
    with pytest.raises(ValueError, match=rf"{name} holds no data rows .*: write .* or point the source"):
        PairDataModule(train=str(path), tokenizer="unused").setup("fit")


def test_skipping_every_row_is_an_error_naming_the_file_not_an_empty_sampler(tmp_path):
    train = _write(tmp_path / "train.jsonl", [json.dumps({"sentence1": "", "sentence2": "b", "score": 1})] * 3)
    with pytest.raises(ValueError, match=r"train.jsonl: every one of its 3 rows is bad .*nothing to read; fix"):
        PairDataModule(train=str(train), tokenizer="unused", on_bad_row="skip").setup("fit")


def test_a_bad_nli_label_is_named_by_its_file_line_also_after_a_where_filter(tmp_path):
    from lightembed.data.pair_sources import load_pairs

    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": label, "genre": genre}
            for i, (label, genre) in enumerate([(0, "a"), (2, "b"), (1, "a"), (7, "a")])]  # fmt: skip
    path = _write(tmp_path / "nli.jsonl", [json.dumps(r) for r in rows[:2]] + [""] + [json.dumps(r) for r in rows[2:]])
    with pytest.raises(ValueError, match=r"bad NLI label 7 in column 'label' at line 5 of .*nli.jsonl"):
        PairDataModule(train=str(path), train_format="nli_triplets", tokenizer="unused").setup("fit")
    spec = {"source": str(path), "format": "nli_entailment_pairs", "where": {"genre": "a"}}
    with pytest.raises(ValueError, match=r"bad NLI label 7 in column 'label' at line 5 of .*nli.jsonl"):
        load_pairs(spec)
