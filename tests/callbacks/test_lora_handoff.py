"""LoRAHandoff: a 1-step fit writes adapter, merged model (safetensors + tokenizer) and, last, handoff.json."""

from __future__ import annotations

import hashlib
import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaModel

from lightembed.backbones import load_backbone
from lightembed.callbacks import lora_handoff
from lightembed.callbacks.lora_handoff import LoRAHandoff, read_handoff, write_handoff
from lightembed.lora import LoRASettings, apply_lora, load_quantized
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


def randomize_b(model, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def adapted_stage(folder, bidirectional: bool | None) -> OneLossStage:
    stage = OneLossStage(model=str(folder), bidirectional=bidirectional, max_length=32)
    stage.backbone = apply_lora(
        load_backbone(str(folder), bidirectional=bidirectional), LoRASettings(r=4, alpha=8, dropout=0.0)
    )
    randomize_b(stage.backbone)
    return stage


@pytest.mark.parametrize(("family", "bidirectional"), [("bert", None), ("llama", True)])
def test_fit_end_writes_a_complete_handoff(family, bidirectional, tiny_bert_dir, tiny_llama_dir, tmp_path):
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
        callbacks=[LoRAHandoff()],
    )
    trainer.fit(stage, train_dataloaders=DataLoader([batch], batch_size=None))

    folder = tmp_path / "handoff"  # the default: <default_root_dir>/handoff without a logger
    assert (folder / "adapter" / "adapter_config.json").is_file()
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    assert (folder / "merged" / "model.safetensors").is_file()
    assert (folder / "merged" / "tokenizer_config.json").is_file()
    assert not list(folder.glob(".*partial"))
    record = read_handoff(folder)
    assert record["merged"] is True and record["adapter"] == "adapter" and record["quantized"] is False
    assert record["base_model"] == str(base) and record["global_step"] == 1
    assert record["lora"]["r"] == 4 and record["lora"]["alpha"] == 8
    assert record["bidirectional"] == bidirectional
    weights = (folder / "merged" / "model.safetensors").read_bytes()
    assert record["weights_sha256"] == {"model.safetensors": hashlib.sha256(weights).hexdigest()}

    # The next stage loads the merged folder by name: same outputs as the trained adapter (attention mode included).
    stage.backbone.eval()
    merged = load_backbone(str(folder / "merged"))
    inputs = {k: v for k, v in batch.items() if k != "token_type_ids" or family == "bert"}
    with torch.no_grad():
        expected = stage.backbone(**inputs).last_hidden_state
        torch.testing.assert_close(merged(**inputs).last_hidden_state, expected, atol=1e-5, rtol=1e-5)
    following = EmbeddingModule(model=str(folder / "merged"), max_length=32)
    torch.testing.assert_close(following.encode(TEXTS), stage.encode(TEXTS), atol=1e-5, rtol=1e-5)


def test_qlora_handoff_merges_into_the_fp32_base(tiny_llama_dir, tmp_path):
    adapted = apply_lora(
        load_quantized(str(tiny_llama_dir), compute_dtype="float32", device="cpu"), LoRASettings(r=4, alpha=8)
    )
    randomize_b(adapted)
    layer = adapted.base_model.model.layers[0].self_attn.v_proj
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * 2.0  # (out, in), scale 8 / 4

    record = read_handoff(write_handoff(adapted, tmp_path / "handoff"))
    assert record["quantized"] is True and record["dtype"] == "float32"
    merged = load_backbone(str(tmp_path / "handoff" / "merged"))
    w = load_backbone(str(tiny_llama_dir)).layers[0].self_attn.v_proj.weight
    torch.testing.assert_close(merged.layers[0].self_attn.v_proj.weight, w + delta, atol=1e-6, rtol=1e-6)


def test_an_interrupted_handoff_never_looks_finished(tiny_bert_dir, tmp_path, monkeypatch):
    folder = tmp_path / "handoff"
    write_handoff(adapted_stage(tiny_bert_dir, None).backbone, folder)
    assert read_handoff(folder)["merged"] is True

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-merge")

    monkeypatch.setattr(lora_handoff, "merge_into_base", crash)
    with pytest.raises(RuntimeError, match="killed"):
        write_handoff(adapted_stage(tiny_bert_dir, None).backbone, folder)
    with pytest.raises(FileNotFoundError, match="handoff.json"):
        read_handoff(folder)


def test_a_backbone_without_adapter_is_handed_off_as_is(tiny_bert_dir, tmp_path):
    backbone = load_backbone(str(tiny_bert_dir))
    record = read_handoff(write_handoff(backbone, tmp_path / "handoff"))
    assert record["adapter"] is None and record["lora"] is None
    assert json.loads((tmp_path / "handoff" / "merged" / "config.json").read_text())["model_type"] == "bert"
