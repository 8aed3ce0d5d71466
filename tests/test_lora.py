"""LoRA: default targets, merge = W + B@A*scale (idempotent), fresh / init_from adapters, QLoRA on CPU."""

from __future__ import annotations

import warnings

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import dequantize_4bit, has_avx512bf16
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

from lightembed.backbones import load_backbone
from lightembed.lora import (
    LoRASettings,
    apply_lora,
    default_target_modules,
    disable_cpu_weight_repacking,
    load_quantized,
    merge_into_base,
    merge_lora,
    save_adapter,
)

LLAMA_TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
SETTINGS = LoRASettings(r=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama64_dir(tmp_path_factory):
    """Hidden 64 for QLoRA: bitsandbytes' CPU repacking needs in_features >= its 64-wide block (hidden 32 crashes)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    folder = tmp_path_factory.mktemp("tiny-llama-64")
    LlamaModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    folder = tmp_path_factory.mktemp("tiny-bert-100")
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.fixture
def ids():
    return torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))


def randomize_b(model: PeftModel, seed: int = 1) -> None:
    """Fresh adapters have B = 0 (a no-op update); give B values so merging is a real test."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def output(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


def lora_grads(model: PeftModel, ids) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def max_relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(((a[n] - b[n]).norm() / b[n].norm()).item() for n in b)


# ------------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    ("field", "value"), [("r", 0), ("alpha", 0), ("dropout", 1.0), ("dropout", -0.1), ("target_modules", [])]
)
def test_invalid_settings_name_the_option(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        LoRASettings(**{field: value})


def test_defaults_are_llm2vecs():
    settings = LoRASettings()
    assert (settings.r, settings.alpha, settings.dropout, settings.target_modules) == (16, 32, 0.05, None)
    assert settings.scale == 2.0


def test_default_targets_are_every_block_projection(llama_dir, bert_dir):
    assert default_target_modules(load_backbone(str(llama_dir))) == LLAMA_TARGETS
    assert default_target_modules(load_backbone(str(bert_dir))) == ["dense", "key", "query", "value"]


def test_layers_outside_the_blocks_are_not_adapted_even_with_a_shared_name():
    bert = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4))
    adapted = apply_lora(bert, SETTINGS)  # BERT's pooler.dense shares the leaf name "dense"
    names = {n.removeprefix("base_model.model.") for n, m in adapted.named_modules() if isinstance(m, LoraLayer)}
    assert "pooler.dense" not in names
    assert len(names) == 2 * 6  # query key value attention.output.dense intermediate.dense output.dense per block


# ---------------------------------------------------------------------------------------------------- merge
@pytest.mark.parametrize(
    ("family", "layer"), [("llama", "layers.0.self_attn.q_proj"), ("bert", "encoder.layer.1.output.dense")]
)
def test_merge_is_w_plus_ba_scale_and_idempotent(family, layer, llama_dir, bert_dir, ids):
    folder = llama_dir if family == "llama" else bert_dir
    adapted = apply_lora(load_backbone(str(folder)), SETTINGS)
    randomize_b(adapted)
    lora_layer = adapted.base_model.model.get_submodule(layer)
    w = lora_layer.base_layer.weight.detach().clone()  # (out, in)
    a = lora_layer.lora_A["default"].weight.detach().clone()  # (r, in)
    b = lora_layer.lora_B["default"].weight.detach().clone()  # (out, r)
    expected = w + b @ a * (SETTINGS.alpha / SETTINGS.r)  # (out, in)
    adapted_out = output(adapted, ids)

    merged = merge_lora(adapted)
    assert not isinstance(merged, PeftModel)
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    torch.testing.assert_close(merged.get_submodule(layer).weight, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(expected, w)  # the update is not negligible
    torch.testing.assert_close(output(merged, ids), adapted_out, atol=1e-5, rtol=1e-5)

    before = {k: v.clone() for k, v in merged.state_dict().items()}
    again = merge_lora(merged)
    assert again is merged
    for key, value in again.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_merge_of_a_plain_model_returns_it_unchanged(llama_dir):
    model = load_backbone(str(llama_dir))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert merge_lora(model) is model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_applying_a_second_adapter_is_refused(llama_dir):
    adapted = apply_lora(load_backbone(str(llama_dir)), SETTINGS)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        apply_lora(adapted, SETTINGS)


# ------------------------------------------------------------------------------------ fresh and init_from
def test_fresh_adapter_on_merged_base_leaves_outputs_unchanged(llama_dir, tmp_path, ids):
    adapted = apply_lora(load_backbone(str(llama_dir)), SETTINGS)
    randomize_b(adapted)
    merged = merge_lora(adapted)
    merged.save_pretrained(tmp_path / "merged")
    reference = output(merged, ids)

    fresh = apply_lora(load_backbone(str(tmp_path / "merged")), LoRASettings())
    assert all(torch.count_nonzero(p) == 0 for n, p in fresh.named_parameters() if "lora_B" in n)
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    torch.testing.assert_close(output(fresh, ids), reference, atol=0, rtol=0)


def test_init_from_loads_the_saved_adapter_as_trainable(llama_dir, tmp_path, ids):
    adapted = apply_lora(load_backbone(str(llama_dir)), SETTINGS)
    randomize_b(adapted)
    saved = {n: p.detach().clone() for n, p in adapted.named_parameters() if "lora_" in n}
    folder = save_adapter(adapted, tmp_path / "adapter")
    assert (folder / "adapter_model.safetensors").is_file()

    resumed = apply_lora(load_backbone(str(llama_dir)), LoRASettings(r=4, alpha=8, init_from=str(folder)))
    loaded = {n: p for n, p in resumed.named_parameters() if "lora_" in n}
    assert loaded.keys() == saved.keys()
    for name, value in saved.items():
        torch.testing.assert_close(loaded[name], value, atol=0, rtol=0)
        assert loaded[name].requires_grad, name
    assert not any(p.requires_grad for n, p in resumed.named_parameters() if "lora_" not in n)
    torch.testing.assert_close(output(resumed, ids), output(adapted, ids), atol=1e-6, rtol=1e-6)


def test_init_from_a_missing_folder_names_the_option(llama_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="init_from"):
        apply_lora(load_backbone(str(llama_dir)), LoRASettings(init_from=str(tmp_path / "nowhere")))


# ---------------------------------------------------------------------------------------------------- QLoRA
def qlora(folder) -> PeftModel:
    adapted = apply_lora(load_quantized(str(folder), compute_dtype="float32", device="cpu"), SETTINGS)
    randomize_b(adapted)
    return adapted


def dequantized_reference(quantized: PeftModel, folder) -> PeftModel:
    """An fp32 model holding dequant(quant(W)) and the same LoRA weights: what QLoRA should compute."""
    reference = load_backbone(str(folder))
    for name, module in quantized.base_model.model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = dequantize_4bit(module.weight.data, module.weight.quant_state)  # (out, in)
            reference.get_submodule(name.removesuffix(".base_layer")).weight.data.copy_(weight)
    reference = apply_lora(reference, SETTINGS)
    reference.load_state_dict({k: v for k, v in quantized.state_dict().items() if "lora_" in k}, strict=False)
    return reference


def eval_pass(model: PeftModel, ids) -> None:
    """What a validation loop does: eval mode, no gradients."""
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)


def is_packed(model) -> bool:
    return any(
        getattr(m.weight.quant_state, "packing_format_for_cpu", False)
        for m in model.modules()
        if isinstance(m, bnb.nn.Linear4bit)
    )


def test_qlora_gradients_survive_a_validation_pass(llama64_dir, ids):
    adapted = qlora(llama64_dir)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in adapted.modules())
    assert all(not m.support_avx512bf16_for_cpu for m in adapted.modules() if isinstance(m, bnb.nn.Linear4bit))
    before = lora_grads(adapted, ids)
    eval_pass(adapted, ids)
    assert not is_packed(adapted)
    after = lora_grads(adapted, ids)
    assert max_relative_error(after, before) == 0.0
    # float32 compute dequantizes then runs F.linear: the same numbers as the fp32 reference (measured 0 error);
    # the tolerance leaves room for a BLAS that reorders the sums.
    reference = lora_grads(dequantized_reference(adapted, llama64_dir), ids)
    assert max_relative_error(after, reference) < 1e-4


def test_without_the_fix_a_validation_pass_breaks_qlora_gradients(llama64_dir, ids):
    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks 4-bit weights here, no bug to show")
    adapted = qlora(llama64_dir)
    before = lora_grads(adapted, ids)
    for module in adapted.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = True  # bitsandbytes' own default on this CPU
    eval_pass(adapted, ids)
    assert is_packed(adapted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that gemv_4bit has no autograd kernel
        broken = lora_grads(adapted, ids)
    assert max_relative_error(broken, before) > 0.05  # measured 0.3-1.2 on every adapter matrix

    assert disable_cpu_weight_repacking(adapted) == 2 * 7
    assert not is_packed(adapted)
    # Packing rounded the block scales to bf16, so the unpacked weights are close to, not equal to, the originals.
    recovered = lora_grads(adapted, ids)
    assert 0.0 < max_relative_error(recovered, before) < 1e-2


def test_merge_lora_refuses_a_quantized_base(llama64_dir):
    with pytest.raises(ValueError, match="merge_into_base"):
        merge_lora(qlora(llama64_dir))


def test_merge_into_base_uses_the_full_precision_weights(llama64_dir, tmp_path, ids):
    adapted = qlora(llama64_dir)
    folder = save_adapter(adapted, tmp_path / "adapter")
    layer = adapted.base_model.model.layers[1].mlp.down_proj
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * (SETTINGS.alpha / SETTINGS.r)

    merged = merge_into_base(str(llama64_dir), folder)
    assert not any(isinstance(m, bnb.nn.Linear4bit | LoraLayer) for m in merged.modules())
    w = load_backbone(str(llama64_dir)).layers[1].mlp.down_proj.weight  # fp32, not dequant(quant(W))
    torch.testing.assert_close(merged.layers[1].mlp.down_proj.weight, w + delta, atol=1e-6, rtol=1e-6)
    # the merged fp32 model differs from the 4-bit one only by the base's quantization error
    fp32_adapted = apply_lora(load_backbone(str(llama64_dir)), SETTINGS)
    fp32_adapted.load_state_dict({k: v for k, v in adapted.state_dict().items() if "lora_" in k}, strict=False)
    torch.testing.assert_close(output(merged, ids), output(fp32_adapted, ids), atol=1e-5, rtol=1e-5)


def test_importing_lora_loads_neither_peft_nor_bitsandbytes():
    """peft imports bitsandbytes, which takes seconds and warns on some CPUs: only LoRA/QLoRA use should pay."""
    import subprocess
    import sys

    code = "import sys, lightembed.lora; print(sorted({'peft', 'bitsandbytes'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert "Failed to load" not in done.stderr


def test_plain_models_are_checked_without_importing_peft(monkeypatch):
    import sys

    from lightembed.lora import has_lora_layers, is_peft_model, is_quantized

    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    for name in ("peft", "bitsandbytes"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # as in a process that never used LoRA
    assert not is_peft_model(plain) and not has_lora_layers(plain) and not is_quantized(plain)
