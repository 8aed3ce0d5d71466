"""Backbone loading: packaged names, local folders, clear errors, the bidirectional switch."""

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from lightembed.backbones import family_of, load_backbone, load_tokenizer, resolve_model_path, set_bidirectional
from lightembed.packaged import resolve_packaged


def test_packaged_minilm_resolves_to_the_folder_inside_the_package():
    path = resolve_packaged("packaged:all-MiniLM-L6-v2")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_unknown_packaged_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="packaged:all-MiniLM-L6-v2"):
        resolve_packaged("packaged:nope")


def test_missing_local_folder_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_model_path(str(missing))


def test_hub_ids_pass_through():
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_load_local_folder(tiny_bert_dir):
    model = load_backbone(str(tiny_bert_dir))
    assert model.config.hidden_size == 32
    assert not any("pooler" in name for name, _ in model.named_parameters())


def test_bad_dtype_names_the_option(tiny_bert_dir):
    with pytest.raises(ValueError, match="dtype"):
        load_backbone(str(tiny_bert_dir), dtype="float8")


def test_unknown_family_is_named(tiny_bert_dir):
    config = LlamaConfig()
    config.model_type = "mystery"
    with pytest.raises(ValueError, match="mystery"):
        family_of(config)


def test_tokenizer_without_pad_token_gets_one(tmp_path, tokenizer):
    tok = load_tokenizer(str(tokenizer.name_or_path))
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    reloaded = load_tokenizer(str(tmp_path))
    assert reloaded.pad_token is not None


def test_bidirectional_switch_on_a_tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
    )
    model = LlamaModel(config).eval()
    a, b = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[5, 6, 7, 9]])
    with torch.no_grad():
        assert torch.equal(model(a).last_hidden_state[0, 0], model(b).last_hidden_state[0, 0])
        set_bidirectional(model, True)
        assert not torch.allclose(model(a).last_hidden_state[0, 0], model(b).last_hidden_state[0, 0])
        set_bidirectional(model, False)
        assert torch.equal(model(a).last_hidden_state[0, 0], model(b).last_hidden_state[0, 0])
