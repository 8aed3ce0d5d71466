"""A lightembed export loads in sentence-transformers offline and gives the same embeddings (±1e-5)."""

import json
from pathlib import Path

import pytest
import torch

from lightembed.api import load_encoder
from lightembed.encoder import Encoder, EncoderSettings
from lightembed.fit import build_cli

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["A man is playing a guitar.", "Someone plays music on stage tonight.", "Short."]


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "last_token", "weighted_mean"])
@pytest.mark.parametrize("normalize", [False, True])
def test_sentence_transformers_gives_the_same_embeddings(tiny_bert_dir, tmp_path, pooling, normalize):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    module = Encoder(EncoderSettings(backbone=str(tiny_bert_dir), pooling=pooling, normalize=normalize, max_length=64))
    folder = module.save_pretrained(tmp_path / "export")
    peer = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    ours = module.encode(TEXTS)
    theirs = torch.as_tensor(peer.encode(TEXTS, convert_to_numpy=True))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_export_reloads_in_lightembed_with_its_settings(tiny_bert_dir, tmp_path):
    module = Encoder(EncoderSettings(backbone=str(tiny_bert_dir), pooling="max", normalize=True, max_length=48))
    folder = module.save_pretrained(tmp_path / "export")
    reloaded = load_encoder(str(folder))
    assert (reloaded.pooling, reloaded.normalize, reloaded.max_length) == ("max", True, 48)
    torch.testing.assert_close(reloaded.encode(TEXTS), module.encode(TEXTS))


def test_packaged_sentence_transformers_folder_settings_are_read(minilm_path):
    encoder = load_encoder(str(minilm_path))
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("mean", True, 256)


def test_lora_backbone_is_exported_merged_with_its_adapter(tiny_bert_dir, tmp_path):
    from lightembed.lora import LoRASettings

    module = Encoder(EncoderSettings(backbone=str(tiny_bert_dir), lora=LoRASettings(r=4, alpha=8)))
    module.build()
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # a non-zero adapter, so the merge has something to do
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    folder = module.save_pretrained(tmp_path / "export")
    assert (folder / "adapter" / "adapter_config.json").is_file()
    reloaded = load_encoder(str(folder))
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    torch.testing.assert_close(reloaded.encode(TEXTS), module.encode(TEXTS), atol=1e-5, rtol=1e-5)


def test_export_keeps_the_base_pooler_so_automodel_misses_nothing(tiny_bert_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel

    module = Encoder(EncoderSettings(backbone=str(tiny_bert_dir)))
    assert not any(n.startswith("backbone.pooler") for n, _ in module.named_parameters())  # loaded without it
    folder = module.save_pretrained(tmp_path / "export")
    _, info = AutoModel.from_pretrained(str(folder), output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    base = load_file(tiny_bert_dir / "model.safetensors")
    exported = load_file(folder / "model.safetensors")
    for name in ("pooler.dense.weight", "pooler.dense.bias"):
        torch.testing.assert_close(exported[name], base[name])
    torch.testing.assert_close(load_encoder(str(folder)).encode(TEXTS), module.encode(TEXTS))


def test_prompts_are_saved_for_sentence_transformers_and_read_back(tiny_bert_dir, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    # cls pooling: the instruction shapes the [CLS] state through attention, and both libraries pool that token
    module = Encoder(EncoderSettings(backbone=str(tiny_bert_dir), pooling="cls", max_length=64))
    module.prompts = {"query": "query: ", "similarity": "Retrieve semantically similar text: "}
    module.default_prompt_name = "similarity"
    folder = module.save_pretrained(tmp_path / "export")
    peer = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    assert peer.prompts["query"] == "query: " and peer.default_prompt_name == "similarity"
    theirs = torch.as_tensor(peer.encode(TEXTS, prompt_name="query", convert_to_numpy=True))
    torch.testing.assert_close(module.encode(TEXTS, prompt_name="query"), theirs, atol=1e-5, rtol=1e-5)
    theirs_default = torch.as_tensor(peer.encode(TEXTS, convert_to_numpy=True))  # the default prompt
    reloaded = load_encoder(str(folder))
    assert (reloaded.prompts, reloaded.default_prompt_name) == (module.prompts, "similarity")
    torch.testing.assert_close(reloaded.encode(TEXTS), theirs_default, atol=1e-5, rtol=1e-5)


def test_fit_export_has_a_model_card_and_the_training_instructions_as_prompts(
    tiny_bert_dir, sts_file, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    fit_shipped_configs(
        tiny_bert_dir,
        sts_file,
        "cardtest",
        "--data.init_args.instructions",
        '{"anchor": "query: "}',
        "--data.init_args.eval_instruction",
        "Retrieve semantically similar text: ",
    )
    export = tmp_path / "checkpoints" / "cardtest" / "version_0" / "export"
    card = (export / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers")
    assert f"base_model: {json.dumps(str(tiny_bert_dir))}" in card
    assert "Loss: `AnglEObjectiveLoss`" in card and '"in_batch.min_score": 4.0' in card
    assert f"{sts_file} (scored_pairs)" in card
    assert "best val/spearman_mean" in card and "SentenceTransformer(" in card
    assert "Encoder.from_pretrained" in card
    st_config = json.loads((export / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "query: ", "similarity": "Retrieve semantically similar text: "}
    assert st_config["default_prompt_name"] == "similarity"


def fit_shipped_configs(model_dir: Path, sts_file: Path, name: str, *extra: str) -> None:
    """``lightembed fit`` with the shipped cpu / angle_minilm / stsb configs on a tiny model: 4 steps, fp32."""
    configs = ["configs/trainer/cpu.yaml", "configs/model/angle_minilm.yaml", "configs/data/stsb.yaml"]
    tiny = json.dumps({"tiny": str(sts_file)})
    options = {
        "model.init_args.encoder.backbone": str(model_dir),
        "model.init_args.encoder.max_length": "32",
        "data.init_args.train": str(sts_file),
        "data.init_args.val": tiny,
        "data.init_args.test": "{}",
        "data.init_args.batch_size": "4",
        "trainer.max_steps": "4",
        "trainer.val_check_interval": "2",
        "trainer.log_every_n_steps": "1",
        "trainer.precision": "32-true",
        "trainer.logger.init_args.name": name,
        "trainer.enable_progress_bar": "false",
    }
    args = [arg for config in configs for arg in ("--config", str(ROOT / config))]
    build_cli(["fit", *args, *(arg for key, value in options.items() for arg in (f"--{key}", value)), *extra])
