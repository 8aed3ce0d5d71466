"""Helpers for the data tests: writing small files, small training sources, and the optional local benchmark copies."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest


@pytest.fixture
def write_jsonl() -> Callable[[Path, Iterable[dict]], Path]:
    """A function writing ``rows`` as JSON lines to ``path`` (parents created) and returning the path."""

    def write(path: Path, rows: Iterable[dict]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path

    return write


@pytest.fixture
def shared_data() -> Path:
    """The local benchmark copies (``/work/shared/data`` next to the repo, or ``$LIGHTEMBED_DATA``); skip if absent."""
    candidates = [Path(p) for p in [os.environ.get("LIGHTEMBED_DATA")] if p]
    candidates.append(Path(__file__).parents[2].parent / "shared" / "data")
    for folder in candidates:
        if (folder / "sts" / "stsb" / "validation.jsonl").is_file():
            return folder
    pytest.skip("local benchmark data not available")


NLI_ROWS = [
    ("A man plays a guitar .", "A man makes music .", "entailment"),
    ("A man plays a guitar .", "A woman sleeps .", "contradiction"),
    ("A man plays a guitar .", "The man is famous .", "neutral"),
    ("Kids run in a park .", "Children are outside .", "entailment"),
    ("Kids run in a park .", "Kids sit indoors .", "contradiction"),
    ("Kids run in a park .", "Kids are playing .", "entailment"),
    ("A dog barks .", "An animal makes noise .", "entailment"),
    ("A dog barks .", "The dog is silent .", "contradiction"),
    ("A chef cooks .", "Someone prepares food .", "entailment"),
    ("A chef cooks .", "Nobody is cooking .", "contradiction"),
]
PARAPHRASE_ROWS = [
    ("The cat sat on the mat.", "A cat was sitting on the mat.", 1),
    ("Stocks fell sharply.", "Shares dropped a lot.", 1),
    ("He left early.", "She arrived late.", 0),
    ("The meeting was moved.", "The meeting was rescheduled.", 1),
    ("It rained all day.", "The day was sunny.", 0),
    ("A man makes music .", "A man is making music.", 1),  # shares a text with the NLI set
    ("Prices went up.", "Costs increased.", 1),
]
SCORED_ROWS = [
    ("A plane takes off.", "An airplane departs.", 4.8),
    ("A boy rides a bike.", "A child is cycling.", 4.1),
    ("The sky is blue.", "The grass is green.", 1.2),
    ("A bird sings.", "A man drives.", 0.2),
    ("The train is late.", "The train arrives late.", 4.4),
]


@pytest.fixture
def pair_rows() -> dict[str, list[tuple]]:
    """The rows of the sources that :func:`data_root` writes, by file stem."""
    return {"nli": NLI_ROWS, "para": PARAPHRASE_ROWS, "sts": SCORED_ROWS}


@pytest.fixture
def data_root(tmp_path, write_jsonl) -> Path:
    """A folder of small training sources (nli, para, sts, triplets) for the multi-dataset tests."""
    write_jsonl(tmp_path / "nli.jsonl", [{"premise": p, "hypothesis": h, "label": lab} for p, h, lab in NLI_ROWS])
    write_jsonl(tmp_path / "para.jsonl", [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in PARAPHRASE_ROWS])
    write_jsonl(tmp_path / "sts.jsonl", [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in SCORED_ROWS])
    write_jsonl(
        tmp_path / "triplets.jsonl",
        [{"query": f"q{i}", "doc": f"d{i}", "hard": f"h{i}"} for i in range(9)],
    )
    return tmp_path
