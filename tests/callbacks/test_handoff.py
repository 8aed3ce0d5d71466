"""The hand-off between pipeline stages: ExportCallback merges a LoRA adapter on export, the next stage starts from
the merged weights (with a fresh adapter, or this one via ``LoRASettings.init_from=<export>/adapter``)."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaModel

from lightembed import encoder as encoder_module
from lightembed.backbones import load_backbone
from lightembed.callbacks import ExportCallback
from lightembed.encoder import EncoderSettings
from lightembed.lora import LoRASettings
from lightembed.pipeline import export_complete
from lightembed.stages.base import EmbeddingModule

TEXTS = ["A man is playing a guitar.", "Someone plays music on stage tonight.", "Short."]


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, tokenizer):
    """A random 2-layer Llama (hidden 32) with the MiniLM tokenizer, so EmbeddingModule can load it by folder."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    folder = tmp_path_factory.mktemp("tiny-llama-tok")
    LlamaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class OneLossStage(EmbeddingModule):
    """The smallest training stage: push mean-pooled embeddings towards 0."""

    def training_step(self, batch, batch_idx):
        return self.embed(batch).pow(2).mean()


def randomize_b(model: torch.nn.Module, seed: int = 1) -> None:
    """A non-zero adapter (peft starts B at 0), so the merge has something to do."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def adapted_stage(folder, bidirectional: bool | None, quantization: str = "none") -> OneLossStage:
    lora = LoRASettings(r=4, alpha=8, dropout=0.0)
    settings = EncoderSettings(
        backbone=str(folder), bidirectional=bidirectional, max_length=32, lora=lora, quantization=quantization
    )
    stage = OneLossStage(encoder=settings)
    stage.configure_model()
    randomize_b(stage)
    return stage


@pytest.mark.parametrize(("family", "bidirectional"), [("bert", None), ("llama", True)])
def test_fit_end_exports_merged_weights_the_next_stage_starts_from(
    family, bidirectional, tiny_bert_dir, tiny_llama_dir, tmp_path
):
    base = tiny_bert_dir if family == "bert" else tiny_llama_dir
    stage = adapted_stage(base, bidirectional)
    batch = dict(stage.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[ExportCallback()],
    )
    trainer.fit(stage, train_dataloaders=DataLoader([batch], batch_size=None))

    folder = tmp_path / "export"  # the default: <default_root_dir>/export without a logger
    assert export_complete(folder)
    assert (folder / "adapter" / "adapter_config.json").is_file()
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer_config.json").is_file()
    adapter = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8
    assert adapter["base_model_name_or_path"] == str(base)
    assert not any("lora_" in key for key in load_backbone(str(folder)).state_dict())

    # The next stage loads the export by name: same outputs as the trained adapter (attention mode included).
    stage.eval()
    merged = load_backbone(str(folder))
    inputs = {k: v for k, v in batch.items() if k != "token_type_ids" or family == "bert"}
    with torch.no_grad():
        expected = stage.backbone(**inputs).last_hidden_state
        torch.testing.assert_close(merged(**inputs).last_hidden_state, expected, atol=1e-5, rtol=1e-5)
    following = EmbeddingModule(encoder=EncoderSettings(backbone=str(folder), max_length=32))
    torch.testing.assert_close(following.encode(TEXTS), stage.encode(TEXTS), atol=1e-5, rtol=1e-5)


def test_qlora_export_merges_into_the_fp32_base(tiny_llama_dir, tmp_path):
    stage = adapted_stage(tiny_llama_dir, None, quantization="4bit")
    layer = stage.backbone.base_model.model.layers[0].self_attn.v_proj
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * 2.0  # (out, in), scale 8 / 4

    folder = stage.encoder.save_pretrained(tmp_path / "export")
    merged = load_backbone(str(folder))
    assert next(merged.parameters()).dtype == torch.float32
    w = load_backbone(str(tiny_llama_dir)).layers[0].self_attn.v_proj.weight
    torch.testing.assert_close(merged.layers[0].self_attn.v_proj.weight, w + delta, atol=1e-6, rtol=1e-6)


def crash(*args, **kwargs):
    raise RuntimeError("killed mid-merge")


def test_an_interrupted_export_never_looks_complete(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(encoder_module, "merge_into_base", crash)
    with pytest.raises(RuntimeError, match="killed"):
        adapted_stage(tiny_bert_dir, None).encoder.save_pretrained(tmp_path / "export")
    assert not export_complete(tmp_path / "export")


def test_an_interrupted_re_export_never_looks_complete(tiny_bert_dir, tmp_path, monkeypatch):
    folder = adapted_stage(tiny_bert_dir, None).encoder.save_pretrained(tmp_path / "export")
    assert export_complete(folder)
    monkeypatch.setattr(encoder_module, "merge_into_base", crash)
    with pytest.raises(RuntimeError, match="killed"):
        adapted_stage(tiny_bert_dir, None).encoder.save_pretrained(folder)
    assert not export_complete(folder)


def test_a_backbone_without_adapter_is_exported_as_is(tiny_bert_dir, tmp_path):
    stage = EmbeddingModule(encoder=EncoderSettings(backbone=str(tiny_bert_dir)))
    folder = stage.encoder.save_pretrained(tmp_path / "export")
    assert export_complete(folder) and not (folder / "adapter").exists()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
