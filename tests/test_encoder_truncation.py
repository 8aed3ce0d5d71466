"""Matryoshka ``truncate_dim`` and 2D-Matryoshka ``layers``: what encode returns, what really runs, what an export
holds (in lightembed and in sentence-transformers), and the errors a bad value gives."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig

from lightembed.backbones import block_list
from lightembed.encoder import ENCODER_SETTINGS_KEY, Encoder, EncoderSettings
from lightembed.pooling import pool

TEXTS = ["A man is playing a guitar.", "A cat sits on the mat.", "", "The stock market fell sharply today."]


@pytest.fixture(scope="module")
def full(tiny_bert_dir) -> Encoder:
    return Encoder.from_pretrained(str(tiny_bert_dir), max_length=64)


def count_block_calls(encoder: Encoder) -> int:
    """How many transformer blocks one ``encode`` runs (a forward hook on every block of the model)."""
    calls = []
    _, blocks = block_list(encoder.backbone)
    handles = [b.register_forward_hook(lambda *_: calls.append(1)) for b in blocks]
    try:
        encoder.encode(TEXTS[:1])
    finally:
        for handle in handles:
            handle.remove()
    return len(calls)


@pytest.mark.parametrize("normalize", [False, True])
def test_truncated_embeddings_are_the_first_dims_renormalised_when_asked(full, normalize):
    whole = full.encode(TEXTS, normalize=False)  # (N, 32)
    cut = full.encode(TEXTS, normalize=normalize, truncate_dim=8)  # (N, 8)
    expected = F.normalize(whole[:, :8], dim=-1) if normalize else whole[:, :8]
    assert cut.shape == (len(TEXTS), 8)
    torch.testing.assert_close(cut, expected)
    if normalize:  # normalised after truncation, not before: unit rows
        torch.testing.assert_close(cut.norm(dim=-1), torch.ones(len(TEXTS)))


def test_the_settings_truncate_dim_is_the_encode_default(tiny_bert_dir, full):
    cut = Encoder.from_pretrained(str(tiny_bert_dir), max_length=64, normalize=True, truncate_dim=8)
    torch.testing.assert_close(cut.encode(TEXTS), F.normalize(full.encode(TEXTS)[:, :8], dim=-1))
    assert cut.encode([]).shape == (0, 8)
    assert cut.encode(TEXTS, truncate_dim=4).shape == (len(TEXTS), 4)  # the call's value wins


def test_a_k_layer_encoder_is_layer_k_of_the_full_model_and_runs_only_k_layers(tiny_bert_dir, full):
    cut = Encoder.from_pretrained(str(tiny_bert_dir), max_length=64, layers=1)
    assert cut.backbone.config.num_hidden_layers == 1 and len(block_list(cut.backbone)[1]) == 1
    features = full.tokenize(TEXTS)
    with torch.inference_mode():
        states = full.backbone(**{k: v for k, v in features.items() if k != "pool_mask"}, output_hidden_states=True)
    expected = pool(states.hidden_states[1], features["attention_mask"], "mean")  # (N, H) after the first block
    torch.testing.assert_close(cut.encode(TEXTS), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full.encode(TEXTS), expected, atol=1e-3)  # the full model's output is another state
    assert count_block_calls(cut) == 1 and count_block_calls(full) == 2


def test_a_llama_is_cut_the_same_way(tiny_llama_dir):
    full = Encoder.from_pretrained(str(tiny_llama_dir), max_length=64, pooling="last_token")
    cut = Encoder.from_pretrained(str(tiny_llama_dir), max_length=64, pooling="last_token", layers=1)
    assert cut.backbone.config.num_hidden_layers == 1
    assert count_block_calls(cut) == 1 and count_block_calls(full) == 2
    features = full.tokenize(TEXTS[:2])
    with torch.inference_mode():
        states = full.backbone(**{k: v for k, v in features.items() if k != "pool_mask"}, output_hidden_states=True)
        # a Llama applies its final norm to the last block's output, whichever block is last
        last = full.backbone.norm(states.hidden_states[1])
    expected = pool(last, features["attention_mask"], "last_token")
    torch.testing.assert_close(cut.encode(TEXTS[:2]), expected, atol=1e-5, rtol=1e-5)


def test_export_of_a_cut_encoder_reloads_cut_in_lightembed_and_sentence_transformers(tiny_bert_dir, tmp_path):
    cut = Encoder.from_pretrained(str(tiny_bert_dir), max_length=64, normalize=True, truncate_dim=8, layers=1)
    expected = cut.encode(TEXTS)  # (N, 8)
    folder = cut.save_pretrained(tmp_path / "export")
    assert AutoConfig.from_pretrained(folder).num_hidden_layers == 1
    assert json.loads((folder / "config_sentence_transformers.json").read_text())["truncate_dim"] == 8
    again = Encoder.from_pretrained(str(folder))
    assert again.settings.truncate_dim == 8 and again.normalize
    assert len(block_list(again.backbone)[1]) == 1
    torch.testing.assert_close(again.encode(TEXTS), expected, atol=1e-5, rtol=1e-5)
    sentence_transformers = pytest.importorskip("sentence_transformers")
    st = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    st_embeddings = st.encode(TEXTS, convert_to_tensor=True)
    assert st_embeddings.shape == (len(TEXTS), 8)
    torch.testing.assert_close(st_embeddings.cpu(), expected, atol=1e-5, rtol=1e-5)


def test_a_checkpoint_can_be_cut_on_loading(full, tmp_path):
    path = tmp_path / "stage.ckpt"
    state = {f"encoder.{k}": v for k, v in full.state_dict().items()}
    torch.save({ENCODER_SETTINGS_KEY: {"settings": full.settings.as_dict()}, "state_dict": state}, path)
    cut = Encoder.from_pretrained(str(path), layers=1, truncate_dim=4)
    assert cut.backbone.config.num_hidden_layers == 1 and cut.encode(TEXTS).shape == (len(TEXTS), 4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"truncate_dim": 0}, "truncate_dim must be a positive"),
        ({"truncate_dim": 33}, "truncate_dim=33 exceeds the model's embedding size 32"),
        ({"layers": 0}, "layers must be a positive"),
        ({"layers": 3}, "layers=3 exceeds the model's 2 transformer layers"),
    ],
)
def test_bad_truncate_dim_or_layers_is_one_clear_error_naming_the_option(tiny_bert_dir, options, message):
    with pytest.raises(ValueError, match=f"encoder.{message}"):
        Encoder.from_pretrained(str(tiny_bert_dir), **options)
    if options.get("layers") == 0 or options.get("truncate_dim") == 0:
        with pytest.raises(ValueError, match=f"encoder.{message}"):
            EncoderSettings(backbone=str(tiny_bert_dir), **options)


def test_bad_truncate_dim_in_encode_names_the_option(full):
    for bad in (0, 33):
        with pytest.raises(ValueError, match="encode: truncate_dim"):
            full.encode(TEXTS, truncate_dim=bad)


def test_a_cut_lora_encoder_adapts_only_the_kept_layers_and_exports_cut(tiny_bert_dir, tmp_path):
    from lightembed.lora import LoRASettings

    settings = EncoderSettings(backbone=str(tiny_bert_dir), max_length=64, layers=1, lora=LoRASettings(r=4))
    encoder = Encoder(settings)
    encoder.build()
    adapted = {name.split(".layer.")[1].split(".")[0] for name, _ in encoder.named_parameters() if "lora_" in name}
    assert adapted == {"0"}  # the removed block got no adapter
    folder = encoder.save_pretrained(tmp_path / "export")
    assert AutoConfig.from_pretrained(folder).num_hidden_layers == 1
    torch.testing.assert_close(Encoder.from_pretrained(str(folder)).encode(TEXTS), encoder.eval().encode(TEXTS))
