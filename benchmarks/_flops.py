"""FLOP counting and the machine's matrix-multiply peak, for utilisation figures (achieved FLOP/s / peak FLOP/s).

* :func:`matmul_peak`: FLOP/s of a square ``n x n`` matmul in a dtype on the current thread count (the best of a few
  timed repeats): the ceiling the precision can reach on this machine.
* :func:`count_flops`: the FLOPs a callable performs (forward and backward), counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` from the shapes of every matrix multiply and attention call it
  runs, so the count holds exactly what the step computes: the LM head only at the positions it is applied to, the
  frozen weights of a LoRA model only for their input gradients, no weight gradient where none is needed. PyTorch's
  counter has no entry for the CPU flash-attention kernel, so it is added here (``4 b h s_q s_k d`` forward and twice
  that backward, the FlashAttention paper's count, without the recomputation).
* :func:`utilisation`: achieved / peak.
* :func:`cpu_model`: the CPU's model name, for the results' ``env`` (the peak belongs to it).

Import it from a benchmark (``from _flops import count_flops, matmul_peak``) with ``benchmarks/`` on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else what :mod:`platform` knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """Measured FLOP/s of a ``size x size`` matmul (``2 size^3`` FLOPs) in ``dtype``, best of ``repeats``.

    ``threads`` sets torch's intra-op thread count for the probe (restored afterwards); ``None`` keeps it.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator).to(dtype)
        b = torch.randn(size, size, generator=generator).to(dtype)
        out = torch.empty(size, size, dtype=dtype)
        for _ in range(2):  # warm-up: oneDNN picks and caches its kernel on the first calls
            torch.mm(a, b, out=out)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - start)
        return 2 * size**3 / best
    finally:
        torch.set_num_threads(previous)


# FlopCounterMode calls a formula with the shapes of the op's tensor arguments (and ``out_shape``)
def _attention_shapes(query: torch.Size, key: torch.Size) -> tuple[int, int, int, int, int]:
    b, h, s_q, d = query  # (B, heads, L_q, D); key/value may have fewer heads (grouped-query attention)
    return b, h, s_q, key[-2], d


def _cpu_flash_forward(query: torch.Size, key: torch.Size, *args: Any, **kwargs: Any) -> int:
    b, h, s_q, s_k, d = _attention_shapes(query, key)
    return 4 * b * h * s_q * s_k * d  # Q K^T and P V: 2 matmuls of 2 b h s_q s_k d FLOPs


def _cpu_flash_backward(grad_out: torch.Size, query: torch.Size, key: torch.Size, *args: Any, **kw: Any) -> int:
    b, h, s_q, s_k, d = _attention_shapes(query, key)
    return 8 * b * h * s_q * s_k * d  # dV, dP, dQ, dK: 4 matmuls


def _custom_mapping() -> dict[Any, Callable[..., int]]:
    mapping: dict[Any, Callable[..., int]] = {}
    aten = torch.ops.aten
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_forward
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_flash_backward
    return mapping


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of ``step`` (matmuls and attention, forward and backward, as executed)."""
    counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    with counter:
        step()
    return int(counter.get_total_flops())


def utilisation(flops: float, seconds: float, peak: float) -> float:
    """Achieved FLOP/s (``flops / seconds``) as a fraction of ``peak`` FLOP/s."""
    return flops / seconds / peak
