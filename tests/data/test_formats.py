"""Row formats: one definition per format, the same conversion row by row (streamed) and in bulk (in memory), and
the old ambiguous ``nli_pairs`` name."""

from __future__ import annotations

import datasets
import pytest

from lightembed.data.formats import (
    FORMATS,
    STS_COLUMNS,
    convert,
    convert_row,
    format_named,
    load_sts,
    to_fields,
)
from lightembed.data.nli import nli_label_id, nli_label_ids

NLI_ROWS = {
    "premise": ["p0", "p0", "p1", "p1", "p2"],
    "hypothesis": ["h0", "h1", "h2", "h3", "h4"],
    "label": ["entailment", "contradiction", "neutral", "ENTAILMENT", "contradiction"],
}


def test_every_format_is_defined_once_with_its_fields():
    assert list(FORMATS) == [
        "pairs",
        "scored_pairs",
        "triplets",
        "nli_triplets",
        "nli_scored_pairs",
        "nli_entailment_pairs",
        "labelled_texts",
        "labelled_pairs",
        "nli_labelled_pairs",
    ]
    assert STS_COLUMNS == ("sentence1", "sentence2", "score") and isinstance(STS_COLUMNS, tuple)
    pairs = FORMATS["pairs"]
    assert pairs.fields(pairs.mapping(None)) == ["anchor", "positive"]
    assert pairs.fields(pairs.mapping({"q": "anchor", "d": "positive", "n": "negative"})) == [
        "anchor",
        "positive",
        "negative",
    ]
    assert FORMATS["nli_scored_pairs"].fields(FORMATS["nli_scored_pairs"].mapping(None)) == [
        "anchor",
        "positive",
        "score",
    ]
    assert not FORMATS["nli_triplets"].streamable and FORMATS["nli_entailment_pairs"].streamable
    with pytest.raises(ValueError, match="must map source columns to each of 'anchor', 'positive', 'score'"):
        FORMATS["scored_pairs"].mapping({"a": "anchor", "b": "positive"})


def test_old_nli_pairs_name_warns_with_the_new_name_or_is_an_error():
    with pytest.warns(FutureWarning, match="write opt: nli_scored_pairs"):
        assert format_named("nli_pairs", "opt", old_meaning="nli_scored_pairs").name == "nli_scored_pairs"
    with pytest.raises(ValueError, match="'nli_scored_pairs' .* or 'nli_entailment_pairs'"):
        format_named("nli_pairs", "opt")
    with pytest.raises(ValueError, match="opt must be one of"):
        format_named("quads", "opt")


@pytest.mark.parametrize("name", ["nli_scored_pairs", "nli_entailment_pairs", "pairs"])
def test_row_by_row_conversion_equals_the_bulk_one(name):
    fmt = FORMATS[name]
    if name == "pairs":
        ds = datasets.Dataset.from_dict({"anchor": ["a", "b"], "positive": ["c", "d"]})
    else:
        ds = datasets.Dataset.from_dict(NLI_ROWS)
    bulk = convert(ds, fmt).to_list()
    one_by_one = [r for r in (convert_row(row, fmt) for row in ds.to_list()) if r is not None]
    assert one_by_one == bulk  # scores 1, 0.5, 0 are exact in float32


def test_one_label_and_the_label_column_map_alike():
    values = ["entailment", " Neutral", "CONTRADICTION", "-", None, 0, 1, 2, -1, 3]
    as_text = datasets.Dataset.from_dict({"label": [v if isinstance(v, str) else None for v in values]})
    as_ints = datasets.Dataset.from_dict({"label": [v if isinstance(v, int) else None for v in values]})
    expected_text = nli_label_ids(as_text, on_bad_row="skip").tolist()
    expected_ints = nli_label_ids(as_ints, on_bad_row="skip").tolist()
    assert [nli_label_id(v if isinstance(v, str) else None) for v in values] == expected_text
    assert [nli_label_id(v if isinstance(v, int) else None) for v in values] == expected_ints


def test_sts_sets_read_as_scored_pairs(fixtures_dir):
    ds = load_sts(str(fixtures_dir / "sts_tiny.jsonl"), "validation")
    assert ds.column_names == ["anchor", "positive", "score"] and len(ds) == 12
    assert to_fields(ds, {"anchor": "anchor"}).column_names == ["anchor"]
