"""Helpers for the data tests: writing small files, and the optional local benchmark copies."""

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
