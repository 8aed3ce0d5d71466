"""benchmarks/llm2vec_peer.py: the settings shared with the peer come from the stage configs, the recorded batches
reach the peer unmasked and unpadded, and the model folder is rewritten in the formats the peer's versions read."""

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("llm2vec_peer", ROOT / "benchmarks" / "llm2vec_peer.py")
peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer)


@pytest.mark.parametrize("stage", ["mntp", "simcse", "supervised"])
def test_stage_settings_follow_the_shipped_configs(stage):
    config = yaml.safe_load(peer.STAGES[stage].read_text())
    trainer = yaml.safe_load(peer.TRAINER_CONFIG.read_text())
    settings = peer.stage_settings(config, trainer)
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert settings["batch_size"] == data["batch_size"]
    assert settings["max_length"] == model["encoder"]["max_length"]
    assert settings["lr"] == model["optimizer"]["init_args"]["lr"]
    assert settings["lora"] == {
        "r": model["encoder"]["lora"]["r"],
        "alpha": model["encoder"]["lora"]["alpha"],
        "dropout": model["encoder"]["lora"]["dropout"],
    }
    assert settings["max_grad_norm"] == trainer["trainer"]["gradient_clip_val"]
    if stage == "mntp":
        assert settings["mask_probability"] == data["mask_probability"]
    else:
        assert settings["temperature"] == model["loss"]["init_args"]["temperature"]
    assert settings["attention_dropout"] == (model["encoder"].get("dropout") or 0.0)


def test_stage_settings_let_the_stage_override_the_trainer():
    config = yaml.safe_load(peer.STAGES["simcse"].read_text())
    config["trainer"]["gradient_clip_val"] = 0.5
    assert peer.stage_settings(config, {"trainer": {"gradient_clip_val": 1.0}})["max_grad_norm"] == 0.5


def test_mntp_rows_restore_masked_tokens_and_drop_padding():
    input_ids = torch.tensor([[5, 99, 7, 8], [9, 10, 99, 0]])  # 99 = mask token, 0 = padding
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    labels = torch.tensor([[-100, 6, -100, -100], [-100, -100, 11, -100]])
    assert peer.mntp_rows(input_ids, attention_mask, labels) == [[5, 6, 7, 8], [9, 10, 11]]


def test_decode_rows_skips_padding():
    class Spy:
        def decode(self, ids, skip_special_tokens):
            assert skip_special_tokens
            return " ".join(map(str, ids))

    features = {
        "input_ids": torch.tensor([[3, 4, 0], [5, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]),
    }
    assert peer.decode_rows(Spy(), features) == ["3 4", "5"]


def test_legacy_config_moves_rope_theta_back():
    config = {"model_type": "llama", "dtype": "float32", "rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}}
    legacy = peer.legacy_config(config)
    assert legacy == {"model_type": "llama", "torch_dtype": "float32", "rope_theta": 1e5}
    scaled = peer.legacy_config({"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}})
    assert scaled == {"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}


def test_legacy_tokenizer_config_uses_the_generic_fast_class_without_token_types():
    current = {"tokenizer_class": "TokenizersBackend", "backend": "tokenizers", "eos_token": "e"}
    legacy = peer.legacy_tokenizer_config(current)
    assert legacy == {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "e",
        "model_input_names": ["input_ids", "attention_mask"],
    }


def test_legacy_tokenizer_writes_merges_as_strings():
    tokenizer = {"model": {"type": "BPE", "merges": [["Ġ", "t"], ["i", "n"]]}, "version": "1.0"}
    legacy = peer.legacy_tokenizer(tokenizer)
    assert legacy["model"]["merges"] == ["Ġ t", "i n"] and legacy["model"]["type"] == "BPE"
    assert tokenizer["model"]["merges"] == [["Ġ", "t"], ["i", "n"]]  # the input is not modified
    assert peer.legacy_tokenizer(legacy) == legacy
    with pytest.raises(ValueError, match="space"):
        peer.legacy_tokenizer({"model": {"merges": [["a b", "c"]]}})


def test_peer_model_folder_links_weights_and_rewrites_json(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"weights")
    (source / "config.json").write_text('{"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}')
    (source / "tokenizer_config.json").write_text('{"tokenizer_class": "TokenizersBackend"}')
    (source / "tokenizer.json").write_text('{"model": {"merges": [["a", "b"]]}}')
    target = peer.peer_model_folder(source, tmp_path / "peer")
    assert (target / "model.safetensors").is_symlink() and (target / "model.safetensors").read_bytes() == b"weights"
    assert '"rope_theta": 100000.0' in (target / "config.json").read_text()
    assert '"a b"' in (target / "tokenizer.json").read_text()


def test_venv_stamp_changes_with_the_pins():
    assert peer.venv_stamp("llm2vec==0.2.3\n", "/site") == peer.venv_stamp("llm2vec==0.2.3\n", "/site")
    assert peer.venv_stamp("llm2vec==0.2.3\n", "/site") != peer.venv_stamp("llm2vec==0.2.2\n", "/site")
    assert peer.venv_stamp("llm2vec==0.2.3\n", "/site") != peer.venv_stamp("llm2vec==0.2.3\n", "/other")


def test_requirements_pin_every_peer_library():
    pins = dict(line.split("==") for line in peer.REQUIREMENTS.read_text().splitlines() if "==" in line)
    assert pins["llm2vec"] == "0.2.3"
    assert {"transformers", "peft", "accelerate", "tokenizers"} <= set(pins)


def test_tail_mean_and_throughput():
    assert peer.tail_mean([9.0, 1.0, 2.0, 3.0, 4.0, 5.0]) == 3.0
    assert peer.throughput(100, 4.0) == 25.0
