"""The notebooks run top to bottom (nbclient) on tiny settings: tiny data root, a few training steps, tiny Llama.

Each notebook reads its parameters from environment variables in its first cell; the kernel inherits them.
The committed notebooks carry no outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01-quickstart", "02-llm2vec-analysis", "03-class-separation"]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def notebook_data(tmp_path_factory) -> Path:
    """STS-B train/validation/test, MR and TREC laid out like ../shared/data, a few dozen rows each."""
    root = tmp_path_factory.mktemp("nbdata")
    subjects = ["A man", "A woman", "A child", "The dog", "A chef", "Two players", "The teacher", "A farmer"]
    actions = ["is playing a guitar", "is slicing an onion", "rides a bike", "runs in the park", "reads a book"]
    sts = []
    for i, subject in enumerate(subjects):
        for j, action in enumerate(actions):
            other = actions[(j + i) % len(actions)]
            sts.append(
                {
                    "sentence1": f"{subject} {action}.",
                    "sentence2": f"{subject} {other}.",
                    "score": 5.0 if other == action else 1.0 + (i % 4),
                }
            )
    for split in ("train", "validation", "test"):
        _jsonl(root / f"sts/stsb/{split}.jsonl", sts)
    words = {0: ["dull", "boring", "weak", "bad"], 1: ["great", "moving", "funny", "good"]}
    _jsonl(
        root / "classification/mr/all.jsonl",
        [{"text": f"a {w} film number {i}", "label": k} for k in (0, 1) for i in range(6) for w in words[k]],
    )
    questions = {"NUM": "How many {} are there ?", "LOC": "Where is the {} ?", "HUM": "Who found the {} ?"}
    things = ["river", "castle", "museum", "bridge", "island", "tower", "forest", "lake"]
    rows = [{"text": template.format(t), "label": label} for label, template in questions.items() for t in things]
    _jsonl(root / "classification/trec/train.jsonl", rows)
    _jsonl(root / "classification/trec/test.jsonl", rows[::2])
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_tiny_settings(name, notebook_data, tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTEMBED_DATA", str(notebook_data))
    monkeypatch.setenv("NB_OUTPUT", str(tmp_path))
    monkeypatch.setenv("NB_MAX_STEPS", "2")
    monkeypatch.setenv("NB_FOLDS", "2")
    monkeypatch.setenv("NB_CLASSIFICATION", "mr,trec")
    monkeypatch.setenv("NB_DECODER", str(tiny_llama_dir))
    monkeypatch.setenv("NB_TEXTS", "8")
    monkeypatch.setenv("NB_POINTS", "12")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbclient.NotebookClient(
        book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    pictures = sorted(p.name for p in tmp_path.rglob("*.png"))
    expected = {
        "01-quickstart": [],
        "02-llm2vec-analysis": ["layer_similarity.png", "prefix_test_base.png"],
        "03-class-separation": ["trec_pca_before_after.png"],
    }[name]
    assert pictures == expected


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_have_no_outputs(name):
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    # notebooks import from the package only (no sys.path tricks, no local modules)
    assert not any("sys.path" in cell.source for cell in code)
