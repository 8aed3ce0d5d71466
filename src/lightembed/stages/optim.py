"""The optimiser and learning-rate schedule every stage uses: AdamW defaults, weight-decay groups, warmup."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import get_scheduler

FUSED_ADAMW_DEVICES = ("cpu", "cuda", "xpu", "mps")  # device types with torch's fused AdamW kernel


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW with the usual fine-tuning defaults (lr 2e-5, weight decay 0.01).

    Fused (one kernel over every weight) where torch has that kernel, as transformers' Trainer defaults to: the same
    update, with far less per-parameter overhead than the for-loop implementation.
    """
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = all(p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01, fused=fused)


def decay_groups(named: Iterable[tuple[str, nn.Parameter]], lr: float | None = None) -> list[dict[str, Any]]:
    """Two groups of the trainable parameters: matrices with weight decay, biases and norms without it; ``lr`` sets
    the groups' own learning rate (else the optimizer's)."""
    named = [(n, p) for n, p in named if p.requires_grad]
    extra = {} if lr is None else {"lr": lr}
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    return [{"params": decay, **extra}, {"params": no_decay, "weight_decay": 0.0, **extra}]


def warmup_schedule(
    optimizer: torch.optim.Optimizer, name: str, warmup_ratio: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' schedule ``name`` with ``ceil(warmup_ratio * total_steps)`` warmup steps (rounded up, as
    transformers' Trainer does)."""
    warmup = math.ceil(warmup_ratio * total_steps)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
