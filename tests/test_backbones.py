"""Backbone loading: packaged names, local folders, clear errors, the bidirectional switch."""

import shutil

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from lightembed.backbones import (
    FAMILIES,
    family_of,
    load_backbone,
    load_tokenizer,
    resolve_model_path,
    set_bidirectional,
)
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


def _tiny_config(model_type: str):
    """A 2-layer, hidden-32 config of ``model_type`` (families name their size fields differently)."""
    from transformers import AutoConfig

    if model_type == "distilbert":
        sizes = {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64}
    else:
        sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    if model_type in FAMILIES and FAMILIES[model_type].kind == "decoder":
        sizes |= {"num_key_value_heads": 2, "head_dim": 8}
    if model_type == "gemma2":
        sizes |= {"layer_types": ["full_attention", "full_attention"]}
    return AutoConfig.for_model(model_type, vocab_size=128, max_position_embeddings=64, pad_token_id=0, **sizes)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_registered_family_loads_runs_and_takes_the_dropout_option(model_type, tmp_path):
    """Each family lightembed claims to support loads through `load_backbone` (with its default attention) and
    has the dropout fields the `dropout` option sets, so that option never silently does nothing."""
    from transformers import AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(_tiny_config(model_type)).save_pretrained(tmp_path)
    model = load_backbone(str(tmp_path), dropout=0.25)
    for name in FAMILIES[model_type].dropout_fields:
        assert getattr(model.config, name) == 0.25, name
    ids = torch.randint(5, 128, (2, 7))
    hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert hidden.shape == (2, 7, 32) and torch.isfinite(hidden).all()


def test_the_default_attention_is_sdpa_where_the_family_has_it(tiny_bert_dir):
    assert load_backbone(str(tiny_bert_dir)).config._attn_implementation == "sdpa"


def test_the_expected_pooler_report_is_quiet_and_other_reports_stay(tiny_bert_dir, tmp_path, caplog):
    """BERT loads without its pooler, so the pooler weights a checkpoint holds are always 'unexpected': no report for
    them; a report naming any other weight is still shown."""
    import logging

    from safetensors.torch import load_file, save_file

    from lightembed.backbones import load_backbone

    with caplog.at_level(logging.WARNING, logger="transformers.modeling_utils"):
        load_backbone(str(tiny_bert_dir))
    assert not [r for r in caplog.records if "LOAD REPORT" in r.getMessage()]

    folder = tmp_path / "extra"
    shutil.copytree(tiny_bert_dir, folder)
    weights = load_file(folder / "model.safetensors")
    weights["encoder.extra.weight"] = torch.zeros(2)
    save_file(weights, folder / "model.safetensors")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transformers.modeling_utils"):
        load_backbone(str(folder))
    assert [r for r in caplog.records if "LOAD REPORT" in r.getMessage() and "encoder.extra" in r.getMessage()]
