"""Fixtures for the evaluation tests: an encoder whose embeddings are written in the text, and a tiny data root.

``VectorEncoder`` reads the embedding from the text itself (``"v:1,0 any words"`` -> ``[1, 0]``), so every expected
score in these tests can be computed by hand from the fixture rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


class VectorEncoder:
    """Duck-typed encoder: ``"v:x,y[,...] rest"`` -> ``[x, y, ...]``; counts how many texts it was asked for."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, sentences, **kwargs) -> np.ndarray:
        self.calls.append(len(sentences))
        return np.array([[float(x) for x in s.split()[0][2:].split(",")] for s in sentences], dtype=np.float32)


@pytest.fixture
def vector_encoder() -> VectorEncoder:
    return VectorEncoder()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(name="write_jsonl")
def write_jsonl_fixture():
    """``write_jsonl(path, rows)``: JSON lines to ``path`` (parents created); returns the path."""
    return write_jsonl


STS_PAIRS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A cat sits on the mat.", "A dog runs in the park.", 0.4),
    ("Kids are playing football.", "Children play soccer outside.", 4.0),
    ("He is reading a book.", "She is cooking dinner.", 0.8),
    ("The sky is blue.", "The grass is green.", 1.2),
    ("A boy rides a bike.", "A child is cycling.", 4.1),
]

WORDS = ["good", "great", "fine", "nice", "fun", "bad", "awful", "poor", "dull", "sad", "ok", "grim"]


def _text_rows(n_per_class: int, classes: list, offset: int = 0) -> list[dict]:
    rows = []
    for k, label in enumerate(classes):
        for i in range(n_per_class):
            rows.append({"text": f"sample {offset + i} is {WORDS[(k * 3 + i) % len(WORDS)]} {label}", "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """A data root laid out like ``../shared/data`` with a few rows per set (STS-B, the 7 SentEval sets)."""
    root = tmp_path_factory.mktemp("data")
    sts = [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in STS_PAIRS]
    write_jsonl(root / "sts/stsb/test.jsonl", sts)
    for name in ("mr", "cr", "subj", "mpqa"):
        write_jsonl(root / f"classification/{name}/all.jsonl", _text_rows(10, [0, 1]))
    write_jsonl(root / "classification/sst2/train.jsonl", _text_rows(8, [0, 1]))
    write_jsonl(root / "classification/sst2/validation.jsonl", _text_rows(3, [0, 1], offset=100))
    write_jsonl(root / "classification/sst2/test.jsonl", _text_rows(3, [0, 1], offset=200))
    write_jsonl(root / "classification/trec/train.jsonl", _text_rows(5, ["NUM", "LOC", "HUM"]))
    write_jsonl(root / "classification/trec/test.jsonl", _text_rows(2, ["NUM", "LOC", "HUM"], offset=300))
    pairs = [
        {"sentence1": f"pair {i} left", "sentence2": f"pair {i} {'left' if i % 2 else 'right side'}", "label": i % 2}
        for i in range(16)
    ]
    write_jsonl(root / "pairs/mrpc/train.jsonl", pairs[:12])
    write_jsonl(root / "pairs/mrpc/test.jsonl", pairs[12:])
    return root
