"""Argument checks and dtype handling shared by every loss in :mod:`lightembed.losses`."""

from __future__ import annotations

import torch
from torch import Tensor


def check_positive(name: str, value: float) -> None:
    """Raise if a constructor option that must be > 0 (a temperature) is not."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def to_float(x: Tensor) -> Tensor:
    """Compute in at least float32: bf16 cosines divided by τ = 0.05 would carry errors of ~0.1 in the logits."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_embeddings(anchor: Tensor, positive: Tensor, negative: Tensor | None) -> Tensor | None:
    """Check ``anchor (B, H)``, ``positive (B, H)``, ``negative (B, N, H) | (B, H) | None``.

    Returns:
        ``negative`` as ``(B, N, H)`` (a ``(B, H)`` input becomes ``N = 1``), or None.
    """
    if anchor.dim() != 2:
        raise ValueError(f"anchor must have shape (B, H), got {tuple(anchor.shape)}")
    if positive.shape != anchor.shape:
        raise ValueError(f"positive must have the shape of anchor {tuple(anchor.shape)}, got {tuple(positive.shape)}")
    if negative is None:
        return None
    if negative.dim() == 2:
        negative = negative.unsqueeze(1)  # (B, 1, H)
    if negative.dim() != 3 or negative.shape[0] != anchor.shape[0] or negative.shape[2] != anchor.shape[1]:
        raise ValueError(
            f"negative must have shape (B, H) or (B, N, H) with (B, H) = {tuple(anchor.shape)}, "
            f"got {tuple(negative.shape)}"
        )
    return negative  # (B, N, H)


def check_labels(labels: Tensor | None, batch_size: int) -> Tensor | None:
    """Check ``labels (B,)`` (scores or 0/1 labels) and return them as a float tensor."""
    if labels is None:
        return None
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape (B,) = ({batch_size},), got {tuple(labels.shape)}")
    return to_float(labels)  # (B,)
