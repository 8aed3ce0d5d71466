"""Which training precision suits this CPU: bf16 only pays off where the CPU multiplies bf16 natively."""

from __future__ import annotations

from typing import Literal

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
