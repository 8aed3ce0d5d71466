"""benchmarks/_flops.py: FLOP counts checked against the formulas by hand, and the matmul peak probe."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _flops import count_flops, matmul_peak, utilisation  # noqa: E402


def test_linear_forward_and_backward_count_three_matmuls_and_a_frozen_weight_two():
    x = torch.randn(16, 32, requires_grad=True)
    trainable, frozen = torch.nn.Linear(32, 8, bias=False), torch.nn.Linear(32, 8, bias=False).requires_grad_(False)
    matmul = 2 * 16 * 32 * 8
    assert count_flops(lambda: trainable(x).sum().backward()) == 3 * matmul  # forward, input grad, weight grad
    assert count_flops(lambda: frozen(x).sum().backward()) == 2 * matmul  # no weight gradient for a frozen weight


def test_cpu_attention_is_counted():
    b, h, kv, length, d = 2, 4, 2, 8, 16
    q = torch.randn(b, h, length, d, requires_grad=True)
    k, v = torch.randn(b, kv, length, d, requires_grad=True), torch.randn(b, kv, length, d, requires_grad=True)
    mask = torch.ones(b, 1, length, length, dtype=torch.bool)
    flops = count_flops(
        lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).sum().backward()
    )
    assert flops == 12 * b * h * length * length * d  # 4 b h s s d forward (QK^T, PV), twice that backward


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_peak_is_a_positive_rate_and_restores_threads(dtype):
    threads = torch.get_num_threads()
    peak = matmul_peak(dtype, size=128, repeats=2, threads=1)
    assert peak > 0 and torch.get_num_threads() == threads


def test_utilisation_is_achieved_over_peak():
    assert utilisation(flops=4e9, seconds=2.0, peak=8e9) == pytest.approx(0.25)
