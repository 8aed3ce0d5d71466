"""Each classic-loss model config trains through ``lightembed fit`` with its data config, on a tiny model and data.

The shipped configs point at ../shared/data; here the training source is a small file the test writes in the same
format, and the model is the tiny random BERT (hidden 32), so sizes tied to MiniLM (384) are overridden.
"""

import json
from pathlib import Path

# Lightning's log handler keeps the sys.stderr of its import: import it before a test's captured stderr
import lightning.pytorch  # noqa: F401
import pytest

TEXTS = [
    ("What is the capital of France ?", "LOC"),
    ("Where is Mount Everest ?", "LOC"),
    ("Which city hosts the Louvre ?", "LOC"),
    ("Where do penguins live ?", "LOC"),
    ("Who wrote Hamlet ?", "HUM"),
    ("Who painted the Mona Lisa ?", "HUM"),
    ("Who was the first president ?", "HUM"),
    ("Who discovered penicillin ?", "HUM"),
    ("How many legs does a spider have ?", "NUM"),
    ("When did the war end ?", "NUM"),
    ("How tall is the tower ?", "NUM"),
    ("What year did man land on the moon ?", "NUM"),
]

PAIRS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 1),
    ("A cat sits on the mat.", "A dog runs in the park.", 0),
    ("Kids are playing football.", "Children play soccer outside.", 1),
    ("The sky is blue.", "The grass is green.", 0),
    ("A plane is taking off.", "An airplane departs.", 1),
    ("He is reading a book.", "She is cooking dinner.", 0),
    ("A boy rides a bike.", "A child is cycling.", 1),
    ("A bird is singing.", "A man is driving a car.", 0),
]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def train_files(tmp_path, fixtures_dir) -> dict[str, Path]:
    return {
        "trec_labels": _write(tmp_path / "labels.jsonl", [{"text": t, "label": c} for t, c in TEXTS]),
        "mrpc_pairs": _write(
            tmp_path / "pairs.jsonl", [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in PAIRS]
        ),
        "snli_labelled_pairs": fixtures_dir / "nli_tiny.jsonl",
        "snli_triplets": fixtures_dir / "nli_tiny.jsonl",
    }


# model config -> (data config, extra overrides for the tiny model)
CASES = {
    "contrastive": ("mrpc_pairs", ()),
    "online_contrastive": ("snli_labelled_pairs", ()),
    "cosine_similarity": ("mrpc_pairs", ()),
    "softmax": ("mrpc_pairs", ("--model.init_args.loss.init_args.embedding_dim", "32")),
    "triplet": ("snli_triplets", ()),
    "batch_hard_triplet": ("trec_labels", ()),
    "batch_semi_hard_triplet": ("trec_labels", ()),
    "batch_all_triplet": ("trec_labels", ()),
    "batch_hard_soft_margin_triplet": ("trec_labels", ()),
    "mega_batch_margin": ("snli_triplets", ()),
    "matryoshka": ("stsb", ("--model.init_args.loss.init_args.dims", "[32, 16, 8]")),
}


@pytest.mark.parametrize("model", sorted(CASES))
def test_classic_loss_config_fits(model, sts_file, train_files, fit_config_two_steps):
    data, extra = CASES[model]
    train = sts_file if data == "stsb" else train_files[data]
    if data == "trec_labels":  # 3 classes x examples_per_class 2
        extra = ("--data.init_args.examples_per_class", "2", *extra)
    fit_config_two_steps(model, data, train, batch_size=6 if data == "trec_labels" else 4, extra=extra)
