"""Encoder.encode with sentence-transformers' options and meanings: batch size, device, progress bar, NumPy output,
normalisation, prompts, and empty strings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightembed.encoder import Encoder

TEXTS = ["A man is playing a guitar.", "Someone plays music on stage tonight.", "Short.", "A much longer sentence " * 3]


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir) -> Encoder:
    return Encoder.from_pretrained(str(tiny_bert_dir), max_length=64)


def test_numpy_output_equals_the_tensor_output(encoder):
    tensor = encoder.encode(TEXTS)
    array = encoder.encode(TEXTS, convert_to_numpy=True)
    assert isinstance(tensor, torch.Tensor) and isinstance(array, np.ndarray)
    assert array.dtype == np.float32 and array.shape == tuple(tensor.shape)
    np.testing.assert_array_equal(array, tensor.numpy())


def test_batch_size_device_and_normalize_mean_what_they_mean_in_sentence_transformers(encoder):
    reference = encoder.encode(TEXTS, batch_size=64)
    torch.testing.assert_close(encoder.encode(TEXTS, batch_size=1, device="cpu"), reference, atol=1e-5, rtol=1e-5)
    normalized = encoder.encode(TEXTS, normalize=True)
    torch.testing.assert_close(normalized.norm(dim=-1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(normalized, torch.nn.functional.normalize(reference, dim=-1))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        encoder.encode(TEXTS, batch_size=0)


def test_progress_bar_is_shown_only_when_asked(encoder, capsys):
    encoder.encode(TEXTS, batch_size=2, show_progress_bar=False)
    assert "Batches" not in capsys.readouterr().err
    encoder.encode(TEXTS, batch_size=2, show_progress_bar=True)
    assert "Batches" in capsys.readouterr().err


def test_empty_string_is_embedded_as_sentence_transformers_does(encoder, tiny_bert_dir, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["", "A sentence.", ""]
    ours = encoder.encode(texts)
    assert ours.shape == (3, encoder.embedding_dim) and torch.isfinite(ours).all()
    torch.testing.assert_close(ours[0], ours[2])
    folder = encoder.save_pretrained(tmp_path / "export")
    peer = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    theirs = torch.as_tensor(peer.encode(texts, convert_to_numpy=True))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_non_strings_are_still_refused(encoder):
    with pytest.raises(ValueError, match=r"text #1 is not a string: None"):
        encoder.encode(["fine", None])
    with pytest.raises(TypeError, match="takes a list of texts"):
        encoder.encode("one string")


def test_default_prompt_and_prompt_name(encoder):
    prompted = Encoder(encoder.settings, tokenizer=encoder.tokenizer)
    prompted.backbone = encoder.backbone
    prompted.prompts = {"query": "query: ", "similarity": "Retrieve similar text: "}
    prompted.default_prompt_name = "similarity"
    with_default = prompted.encode(TEXTS)
    torch.testing.assert_close(with_default, encoder.encode(TEXTS, instruction="Retrieve similar text: "))
    query = encoder.encode(TEXTS, instruction="query: ")
    torch.testing.assert_close(prompted.encode(TEXTS, prompt_name="query"), query)
    torch.testing.assert_close(prompted.encode(TEXTS, instruction=""), encoder.encode(TEXTS))
    with pytest.raises(ValueError, match="unknown prompt_name 'missing'"):
        prompted.encode(TEXTS, prompt_name="missing")
