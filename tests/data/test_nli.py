"""NLI labels, triplets and scored pairs, checked against hand-written expectations and a naive loop."""

from __future__ import annotations

import itertools
import logging
import time

import datasets
import numpy as np
import pytest

from lightembed.data.nli import NLI_LABELS, nli_label_ids, nli_to_pairs, nli_to_triplets
from lightembed.data.sources import load_source

NLI = ["premise", "hypothesis", "label"]
GUITAR = "A man is playing a guitar on stage."
DOGS = "Two dogs run through a snowy field."


@pytest.fixture
def nli_tiny(fixtures_dir) -> datasets.Dataset:
    return load_source(str(fixtures_dir / "nli_tiny.jsonl"), NLI)


def _ds(labels, feature=None) -> datasets.Dataset:
    n = len(labels)
    data = {"premise": [f"p{i // 3}" for i in range(n)], "hypothesis": [f"h{i}" for i in range(n)], "label": labels}
    features = None
    if feature is not None:
        features = datasets.Features(
            premise=datasets.Value("string"), hypothesis=datasets.Value("string"), label=feature
        )
    return datasets.Dataset.from_dict(data, features=features)


def test_label_ids_from_names_ints_and_classlabel():
    names = ["entailment", " Neutral", "CONTRADICTION", "neutral"]
    assert nli_label_ids(_ds(names)).tolist() == [0, 1, 2, 1]
    assert nli_label_ids(_ds([2, 0, 1])).tolist() == [2, 0, 1]
    reordered = datasets.ClassLabel(names=["contradiction", "entailment", "neutral"])
    assert nli_label_ids(_ds([0, 1, 2], reordered)).tolist() == [2, 0, 1]


@pytest.mark.parametrize(
    ("labels", "shown", "row"),
    [
        ([0, 1, -1, 2], "-1", 2),
        (["entailment", "maybe"], "'maybe'", 1),
        (["neutral", None], "None", 1),
        ([0, 7], "7", 1),
    ],
)
def test_bad_label_names_label_and_row(labels, shown, row):
    with pytest.raises(ValueError, match=rf"bad NLI label {shown} in column 'label' at row {row} \(0-based\)"):
        nli_label_ids(_ds(labels))


def test_bad_labels_skipped_and_counted(caplog):
    with caplog.at_level(logging.WARNING, logger="lightembed.data.nli"):
        pairs = nli_to_pairs(_ds([0, -1, 2, -1, 1]), on_bad_row="skip")
    assert pairs["positive"][:] == ["h0", "h2", "h4"]
    assert "skipped 2 of 5 NLI rows" in caplog.text


def test_triplets_match_hand_computed(nli_tiny):
    expected = [
        {"anchor": GUITAR, "positive": "A man is performing music.", "negative": "The man is sleeping at home."},
        {"anchor": GUITAR, "positive": "A man is performing music.", "negative": "Nobody is on the stage."},
        {"anchor": GUITAR, "positive": "A person plays an instrument.", "negative": "The man is sleeping at home."},
        {"anchor": GUITAR, "positive": "A person plays an instrument.", "negative": "Nobody is on the stage."},
        {"anchor": DOGS, "positive": "Animals are outside.", "negative": "The dogs are sleeping indoors."},
    ]
    triplets = nli_to_triplets(nli_tiny)
    assert triplets.column_names == ["anchor", "positive", "negative"]
    assert triplets.to_list() == expected


def test_pairs_default_and_custom_scores(nli_tiny):
    pairs = nli_to_pairs(nli_tiny)
    assert pairs.column_names == ["anchor", "positive", "score"]
    assert len(pairs) == 12
    by_name = {"entailment": 1.0, "neutral": 0.5, "contradiction": 0.0}
    assert pairs["score"][:] == [by_name[name] for name in nli_tiny["label"][:]]
    assert pairs["positive"][:] == nli_tiny["hypothesis"][:]

    positives = nli_to_pairs(nli_tiny, scores={"entailment": 1.0})
    assert len(positives) == 4 and set(positives["score"][:]) == {1.0}
    with pytest.raises(ValueError, match="unknown label name"):
        nli_to_pairs(nli_tiny, scores={"entails": 1.0})


def _naive_triplets(rows):
    premises, by_premise = [], {}
    for row in rows:
        if row["premise"] not in by_premise:
            premises.append(row["premise"])
            by_premise[row["premise"]] = ([], [])
        ids = NLI_LABELS.index(row["label"])
        if ids == 0:
            by_premise[row["premise"]][0].append(row["hypothesis"])
        elif ids == 2:
            by_premise[row["premise"]][1].append(row["hypothesis"])
    return [
        {"anchor": p, "positive": pos, "negative": neg}
        for p in premises
        for pos, neg in itertools.product(*by_premise[p])
    ]


def test_triplets_vectorised_equal_naive_loop_and_fast():
    rng = np.random.default_rng(0)
    n = 10_000
    rows = {
        "premise": [f"premise {i}" for i in rng.integers(0, 3300, n)],
        "hypothesis": [f"hypothesis {i}" for i in range(n)],
        "label": [NLI_LABELS[i] for i in rng.integers(0, 3, n)],
    }
    ds = datasets.Dataset.from_dict(rows)
    start = time.perf_counter()
    triplets = nli_to_triplets(ds)
    pairs = nli_to_pairs(ds)
    elapsed = time.perf_counter() - start
    assert triplets.to_list() == _naive_triplets(ds.to_list())
    assert len(pairs) == n
    assert elapsed < 1.0, f"nli conversion of {n} rows took {elapsed:.2f} s"


def test_real_snli_validation(shared_data):
    path = shared_data / "nli" / "snli" / "validation.jsonl"
    if not path.is_file():
        pytest.skip("SNLI copy not available")
    ds = load_source(str(path), NLI)
    start = time.perf_counter()
    triplets = nli_to_triplets(ds)
    elapsed = time.perf_counter() - start
    assert len(triplets) > 3000
    assert elapsed < 1.0
