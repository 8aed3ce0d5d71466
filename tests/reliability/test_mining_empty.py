"""mine-negatives on an input that yields no negative (a single pair: its own positive is the whole pool) stops with
one message naming the input and what to do, and writes nothing that `fit` would later crash on."""

from __future__ import annotations

import json

import pytest

from lightembed.mining import mine_negatives_main


class Unit:
    def encode(self, texts, batch_size=64, normalize=None, precision="float32"):
        import torch

        return torch.ones(len(texts), 2)


def test_one_row_input_is_a_clear_error_and_writes_nothing(tmp_path):
    source = tmp_path / "one.jsonl"
    source.write_text(json.dumps({"sentence1": "a question", "sentence2": "its answer"}) + "\n")
    out = tmp_path / "mined.jsonl"
    with pytest.raises(ValueError) as err:
        mine_negatives_main(["fake", "--input", str(source), "--output", str(out)], encoder=Unit())
    message = str(err.value)
    assert str(source) in message and "no hard negative found" in message and "--candidates" in message
    assert "\n" not in message
    assert not out.exists() and not list(tmp_path.glob("mined.jsonl*"))
