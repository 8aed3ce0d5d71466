"""Which training precision suits this CPU: bf16 only pays off where the CPU multiplies bf16 natively."""

from __future__ import annotations

from typing import Any, Literal

import torch


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (oneDNN's test: AVX512/AMX on x86, BF16 on Arm).

    Without it bf16 autocast is emulated in software and is many times *slower* than fp32, so fp32 is the faster
    training precision there.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def cpu_training_precision() -> Literal["bf16-mixed", "32-true"]:
    """The faster Lightning precision for training on this CPU: ``bf16-mixed`` with native bf16, else ``32-true``."""
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


AUTO = "auto"
"""The precision lightembed resolves for the machine (``--trainer.precision auto``, configs/trainer/cpu.yaml)."""


def resolve_precision(precision: Any, accelerator: Any = "auto") -> Any:
    """Lightning's precision for ``precision``; ``"auto"`` becomes the faster training precision of the machine.

    On CPUs (``accelerator: cpu``, or ``auto`` without a CUDA device) that is :func:`cpu_training_precision`; on
    CUDA GPUs ``bf16-mixed`` where the GPU supports bf16, else ``32-true``. Any other value is returned unchanged.
    """
    if precision != AUTO:
        return precision
    on_cpu = accelerator == "cpu" or (accelerator in ("auto", None) and not torch.cuda.is_available())
    if on_cpu:
        return cpu_training_precision()
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
