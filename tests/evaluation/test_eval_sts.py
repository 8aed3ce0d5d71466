"""STS evaluator: hand-computed Spearman/Pearson, the 7-task "all" setting, errors naming the file."""

import json
import math

import pytest

from lightembed.evaluation.encoding import EncodeCache
from lightembed.evaluation.sts import STS_ALL, evaluate_sts, parse_named_sources, sts_all_sources


def _rows():
    # cosines with v:1,0 : 1.0, 0.8, 0.0, -0.6  (unit vectors: (1,0), (.8,.6), (0,1), (-.6,.8))
    return [
        {"sentence1": "v:1,0 a", "sentence2": "v:1,0 b", "score": 5.0},
        {"sentence1": "v:1,0 c", "sentence2": "v:0.8,0.6 d", "score": 3.0},
        {"sentence1": "v:1,0 e", "sentence2": "v:0,1 f", "score": 4.0},
        {"sentence1": "v:1,0 g", "sentence2": "v:-0.6,0.8 h", "score": 1.0},
    ]


def test_spearman_and_pearson_match_hand_computation(tmp_path, vector_encoder):
    path = tmp_path / "sts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    [result] = evaluate_sts(vector_encoder, {"toy": str(path)})
    # ranks: cosine (4, 3, 2, 1) vs gold (4, 2, 3, 1): sum d^2 = 2 -> rho = 1 - 6*2 / (4 * 15) = 0.8
    assert result.spearman == pytest.approx(80.0)
    cos, gold = [1.0, 0.8, 0.0, -0.6], [5.0, 3.0, 4.0, 1.0]
    mc, mg = sum(cos) / 4, sum(gold) / 4
    cov = sum((c - mc) * (g - mg) for c, g in zip(cos, gold, strict=True))
    pearson = cov / math.sqrt(sum((c - mc) ** 2 for c in cos) * sum((g - mg) ** 2 for g in gold))
    assert result.pearson == pytest.approx(pearson * 100)
    assert result.pairs == 4


def test_each_distinct_text_is_encoded_once_across_sets(tmp_path, vector_encoder):
    path = tmp_path / "sts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    cache = EncodeCache(vector_encoder)
    evaluate_sts(cache, {"a": str(path), "b": str(path)})
    assert vector_encoder.calls == [8]  # 8 distinct texts; the second set finds all of them in the cache
    assert cache.encoded == 8


def test_constant_scores_name_the_file(tmp_path, vector_encoder):
    rows = [dict(r, score=2.0) for r in _rows()]
    path = tmp_path / "flat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="constant") as info:
        evaluate_sts(vector_encoder, {"flat": str(path)})
    assert "flat.jsonl" in str(info.value) and "constant" in str(info.value)


def test_a_row_without_a_score_names_file_and_row(tmp_path, vector_encoder):
    rows = _rows()
    del rows[2]["score"]
    path = tmp_path / "holes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"line 3 of .*holes\.jsonl"):
        evaluate_sts(vector_encoder, {"holes": str(path)})


def test_a_missing_column_names_the_file(tmp_path, vector_encoder):
    path = tmp_path / "nocol.jsonl"
    path.write_text("".join(json.dumps({"sentence1": r["sentence1"], "score": r["score"]}) + "\n" for r in _rows()))
    with pytest.raises(ValueError, match=r"nocol\.jsonl.*missing column.*sentence2"):
        evaluate_sts(vector_encoder, {"nocol": str(path)})


def test_all_setting_uses_local_files_when_present_else_the_hub(tmp_path):
    (tmp_path / "sts/stsb").mkdir(parents=True)
    (tmp_path / "sts/stsb/test.jsonl").write_text("")
    (tmp_path / "sts/sick").mkdir(parents=True)
    (tmp_path / "sts/sick/test.jsonl").write_text("")
    sources = sts_all_sources(str(tmp_path))
    assert list(sources) == list(STS_ALL) == ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"]
    assert sources["stsb"] == "sts/stsb/test.jsonl"
    assert sources["sickr"] == "sts/sick/test.jsonl"
    assert sources["sts12"] == "mteb/sts12-sts"
    named = parse_named_sources(["all", "extra=x.jsonl"], data_root=str(tmp_path))
    assert list(named) == [*STS_ALL, "extra"]
