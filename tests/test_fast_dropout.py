"""FastDropout: LoRA's input dropout with a cheaper keep mask (lightembed.lora.FastDropout / use_fast_dropout)."""

import math

import pytest
import torch
from torch import nn

from lightembed.backbones import load_backbone
from lightembed.lora import FastDropout, LoRASettings, apply_lora, use_fast_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_rate_is_within_statistical_bounds_and_mean_is_preserved(p):
    torch.manual_seed(0)
    x = torch.ones(1_000_003)  # an odd size: the last 64-bit word is only partly used
    out = FastDropout(p).train()(x)
    kept = out != 0
    rate = kept.float().mean().item()
    expected = 1 - round(p * 65536) / 65536
    sigma = math.sqrt(expected * (1 - expected) / x.numel())
    assert abs(rate - expected) < 5 * sigma
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)))  # kept values scaled by 1/(1-p)
    assert abs(out.mean().item() - 1) < 5 * sigma / (1 - p)  # the mean is preserved in expectation


def test_mask_positions_are_uniform_across_the_slices_of_a_word():
    torch.manual_seed(1)
    out = FastDropout(0.5).train()(torch.ones(400_000, 4))  # column j reads slice j of each 64-bit word
    rates = (out != 0).float().mean(0)
    assert torch.allclose(rates, torch.full_like(rates, 0.5), atol=0.005)


def test_eval_is_identity_and_p_zero_is_identity():
    x = torch.randn(7, 5)
    assert torch.equal(FastDropout(0.3).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)


def test_deterministic_under_a_seed_and_different_across_calls():
    x = torch.randn(64, 33)
    layer = FastDropout(0.2).train()
    torch.manual_seed(5)
    first, second = layer(x), layer(x)
    torch.manual_seed(5)
    assert torch.equal(layer(x), first)
    assert not torch.equal(first, second)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(50, 40, requires_grad=True)
    out = FastDropout(0.25).train()(x)
    out.sum().backward()
    expected = (out.detach() != 0).float() / 0.75
    assert torch.allclose(x.grad, expected)


def test_bf16_inputs_keep_their_dtype():
    out = FastDropout(0.1).train()(torch.ones(100, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_apply_lora_uses_it_for_every_adapted_layer(tiny_llama_dir):
    model = apply_lora(load_backbone(str(tiny_llama_dir)), LoRASettings(r=2, alpha=4, dropout=0.1))
    dropouts = [
        d
        for m in model.modules()
        if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
        for d in m.lora_dropout.values()
    ]
    assert dropouts and all(type(d) is FastDropout and d.p == 0.1 for d in dropouts)
    assert use_fast_dropout(model) == 0  # already replaced: nothing left to do


def test_no_dropout_stays_identity(tiny_llama_dir):
    model = apply_lora(load_backbone(str(tiny_llama_dir)), LoRASettings(r=2, alpha=4, dropout=0.0))
    assert not any(isinstance(m, FastDropout) for m in model.modules())
