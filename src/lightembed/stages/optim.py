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


def decay_groups(
    named: Iterable[tuple[str, nn.Parameter]], lr: float | None = None, prefix: str = ""
) -> list[dict[str, Any]]:
    """Two groups of the trainable parameters: matrices with weight decay, biases and norms without it; ``lr`` sets
    the groups' own learning rate (else the optimizer's).

    The groups are named ``<prefix>decay`` and ``<prefix>no_decay``: Lightning's ``LearningRateMonitor`` logs each
    group's rate under its name (``lr-AdamW/decay``) instead of its position (``pg1``).
    """
    named = [(n, p) for n, p in named if p.requires_grad]
    extra = {} if lr is None else {"lr": lr}
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    return [
        {"params": decay, "name": f"{prefix}decay", **extra},
        {"params": no_decay, "weight_decay": 0.0, "name": f"{prefix}no_decay", **extra},
    ]


def unique_group_names(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Name every parameter group, and make names unique (``decay``, ``decay-2``): ``LearningRateMonitor`` refuses
    two groups of one optimizer with the same name, e.g. a stage that builds decay groups for two parts of a model."""
    seen: dict[str, int] = {}
    named = []
    for i, group in enumerate(groups, start=1):
        name = str(group.get("name", f"pg{i}"))
        seen[name] = seen.get(name, 0) + 1
        named.append({**group, "name": name if seen[name] == 1 else f"{name}-{seen[name]}"})
    return named


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's class and its plain defaults (``lr``, ``weight_decay``, ``betas`` ...), for hyperparameter
    logs: ``{"optimizer": "AdamW", "optimizer.lr": 2e-05, ...}``."""
    settings: dict[str, Any] = {"optimizer": type(optimizer).__name__}
    for key, value in optimizer.defaults.items():
        if isinstance(value, bool | int | float | str):
            settings[f"optimizer.{key}"] = value
        elif isinstance(value, tuple) and all(isinstance(v, int | float) for v in value):  # betas
            settings[f"optimizer.{key}"] = list(value)  # a list, so hparams.yaml stays plain YAML
    return settings


def warmup_schedule(
    optimizer: torch.optim.Optimizer, name: str, warmup_ratio: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' schedule ``name`` with ``ceil(warmup_ratio * total_steps)`` warmup steps (rounded up, as
    transformers' Trainer does)."""
    warmup = math.ceil(warmup_ratio * total_steps)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
