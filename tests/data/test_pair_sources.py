"""Named training sources (PairSource): formats, filters and limit, read in memory; errors naming the source."""

from __future__ import annotations

import traceback

import pytest

from lightembed.data import PairSource, load_pairs


def _message(err: BaseException) -> str:
    return "".join(traceback.format_exception_only(err))


def test_load_pairs_formats_filters_and_limit(data_root, pair_rows):
    nli = load_pairs(PairSource("nli.jsonl", format="nli_triplets"), str(data_root))
    assert nli.column_names == ["anchor", "positive", "negative"]
    assert len(nli) == 5  # guitar 1x1, park 2x1, dog 1x1, chef 1x1
    pairs = load_pairs({"source": "nli.jsonl", "format": "nli_entailment_pairs"}, str(data_root))
    assert pairs.column_names == ["anchor", "positive"] and len(pairs) == 5
    para = load_pairs({"source": "para.jsonl", "where": {"label": 1}}, str(data_root))
    assert len(para) == 5 and para[0] == {"anchor": pair_rows["para"][0][0], "positive": pair_rows["para"][0][1]}
    both = load_pairs({"source": "para.jsonl", "where": {"label": [0, 1]}, "limit": 3}, str(data_root))
    assert len(both) == 3
    sts = load_pairs(PairSource("sts.jsonl", min_score=4.0), str(data_root))
    assert sts["anchor"] == ["A plane takes off.", "A boy rides a bike.", "The train is late."]
    trip = load_pairs(
        PairSource("triplets.jsonl", columns={"query": "anchor", "doc": "positive", "hard": "negative"}),
        str(data_root),
    )
    assert trip.column_names == ["anchor", "positive", "negative"] and trip[2] == {
        "anchor": "q2",
        "positive": "d2",
        "negative": "h2",
    }
    assert len(load_pairs("para.jsonl", str(data_root))) == 7  # a plain string is a sentence1/sentence2 file


def test_source_without_the_mapped_columns_is_a_clear_error(data_root):
    with pytest.raises(ValueError) as info:
        load_pairs(PairSource("triplets.jsonl"), str(data_root), name="mine")  # pairs: sentence1/sentence2
    message = _message(info.value)
    assert "missing column(s) ['sentence1', 'sentence2']" in message and "triplets.jsonl" in message
    assert "found ['query', 'doc', 'hard']" in message and "training source 'mine'" in message


def test_empty_after_filtering_is_a_clear_error(data_root):
    with pytest.raises(ValueError, match=r"training source 'para' \(para.jsonl\) is empty after where label = 7"):
        load_pairs(PairSource("para.jsonl", where={"label": 7}), str(data_root), name="para")
    with pytest.raises(ValueError, match=r"is empty after score >= 5.5 \(5 rows read\)"):
        load_pairs(PairSource("sts.jsonl", min_score=5.5), str(data_root))
    with pytest.raises(ValueError, match="does not fit column type"):
        load_pairs(PairSource("para.jsonl", where={"label": "yes"}), str(data_root))


def test_pair_source_checks_its_options():
    with pytest.raises(ValueError, match="format must be one of"):
        PairSource("x.jsonl", format="quads")
    with pytest.raises(ValueError, match="'anchor', 'positive' and optionally 'negative'"):
        PairSource("x.jsonl", columns={"a": "anchor", "b": "score"})
    with pytest.raises(ValueError, match="same field"):
        PairSource("x.jsonl", columns={"a": "anchor", "b": "anchor"})
    with pytest.raises(ValueError, match="must map source columns to each of 'premise', 'hypothesis', 'label'"):
        PairSource("x.jsonl", format="nli_entailment_pairs", columns={"a": "premise", "b": "hypothesis"})
    with pytest.raises(ValueError, match="format must be one of"):
        PairSource("x.jsonl", format="nli_scored_pairs")  # scores have no place in a multi-dataset batch
    with pytest.raises(ValueError, match="cannot stream"):
        PairSource("x.jsonl", format="nli_triplets", streaming=True)


def test_old_nli_pairs_name_reads_as_entailment_pairs_with_a_warning(data_root):
    with pytest.warns(FutureWarning, match="format='nli_pairs' is deprecated: it reads as 'nli_entailment_pairs'"):
        spec = PairSource("nli.jsonl", format="nli_pairs")
    assert spec.format == "nli_entailment_pairs"
    expected = load_pairs(PairSource("nli.jsonl", format="nli_entailment_pairs"), str(data_root))
    assert load_pairs(spec, str(data_root)).to_list() == expected.to_list()
