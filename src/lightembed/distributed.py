"""Cross-device in-batch negatives: gather embeddings (with gradients), labels and duplicate ids from every rank.

Under DDP or FSDP each rank holds ``B_r`` rows of a global batch of ``B = Σ_r B_r``. A contrastive loss computed on
the local rows only sees ``B_r - 1`` in-batch negatives; gathered, every rank computes the *same* global loss ``L``
on all ``B`` rows (rank order, so row ``i`` of the anchors still belongs with row ``i`` of the positives, hard
negatives and ids).

Gradients: :func:`gather_with_grad` returns the global tensor; its backward keeps the gradient of the local rows and
multiplies it by the world size ``W``. The data-parallel strategy then averages parameter gradients over ranks::

    (1/W) Σ_r W · ∂L/∂e_r · ∂e_r/∂θ = dL/dθ

which is the single-process gradient of the loss on the full global batch, with no communication in the backward.
This holds for any loss that every rank computes identically from the gathered tensors: in-batch InfoNCE (its
labels are the rows' global positions, i.e. local position + the sizes of the lower ranks), CoSENT and angle
ranking over all pairs, AnglE's sum.

Duplicate ids: the collators give every text a stable 64-bit hash of its normalised form (``anchor_ids``,
``positive_ids``, ``negative_ids``; :func:`lightembed.data.collators.text_ids`), the same on every rank, so
:func:`gather_text_ids` only concatenates them: identical texts are recognised across ranks too, and the gathered
loss equals the single-process loss on the global batch even when a text recurs on two ranks.

Without an initialised process group (or with one process) every function returns its input unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

MAX_DIMS = 4  # the gathered tensors are (B,), (B, N), (B, H) or (B, N, H)


def world_size() -> int:
    """Number of processes in the default group (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group (0 without torch.distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _gather_shapes(x: Tensor) -> list[tuple[int, ...]]:
    """Every rank's shape of ``x``; ranks may differ in rows only (the last batch of an epoch can be smaller)."""
    if x.dim() > MAX_DIMS:
        raise ValueError(f"can gather tensors of at most {MAX_DIMS} dims, got shape {tuple(x.shape)}")
    shape = torch.full((MAX_DIMS + 1,), -1, dtype=torch.int64, device=x.device)  # (5,) ndim, then the shape
    shape[0] = x.dim()
    shape[1 : x.dim() + 1] = torch.tensor(x.shape, dtype=torch.int64)
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    result = [tuple(int(d) for d in s[1 : int(s[0]) + 1]) for s in shapes]
    if any(len(s) != x.dim() or s[1:] != tuple(x.shape[1:]) for s in result):
        raise ValueError(
            f"ranks hold tensors of different shapes beyond the batch dimension: {result}; every rank needs the "
            "same hidden size and number of hard negatives per row"
        )
    return result


def _gather_padded(x: Tensor) -> tuple[list[Tensor], list[int]]:
    """All-gather ``x (B_r, ...)`` from every rank (rows padded to the largest ``B_r``): per-rank tensors and sizes."""
    sizes = [s[0] for s in _gather_shapes(x)]
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))  # (max B_r, ...)
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return [part[:size] for part, size in zip(parts, sizes, strict=True)], sizes


class _GatherForGlobalLoss(torch.autograd.Function):
    """Forward: concatenate every rank's rows. Backward: this rank's rows of the gradient, times the world size."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts, sizes = _gather_padded(x)
        me = dist.get_rank()
        parts[me] = x  # the local rows are the input itself (same values)
        ctx.start = sum(sizes[:me])
        ctx.stop = ctx.start + sizes[me]
        ctx.world = len(sizes)
        return torch.cat(parts)  # (Σ_r B_r, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad[ctx.start : ctx.stop] * ctx.world  # (B_r, ...): DDP/FSDP's mean over ranks undoes the factor


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather ``x (B_r, ...)`` into ``(Σ_r B_r, ...)`` in rank order, keeping the gradient of the local rows.

    For a loss computed identically on every rank from the gathered tensors; see the module docstring for why the
    backward scales by the world size.
    """
    if world_size() == 1:
        return x
    return _GatherForGlobalLoss.apply(x)


def gather(x: Tensor | None) -> Tensor | None:
    """All-gather ``x (B_r, ...)`` into ``(Σ_r B_r, ...)`` in rank order, without gradient (labels, scores, ids)."""
    if x is None or world_size() == 1:
        return x
    dtype = x.dtype
    parts, _ = _gather_padded(x.to(torch.int64) if dtype == torch.bool else x)
    return torch.cat(parts).to(dtype)


def gather_text_ids(ids: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
    """Gather duplicate ids (e.g. ``anchor_ids``, ``positive_ids``, ``negative_ids``) in rank order.

    The ids must be global text identities (the collators' hashes), not batch-local numbers: equal ids on two ranks
    mean the same text. Missing entries stay None; every rank must pass the same keys with or without ids.
    """
    return {k: gather(v) for k, v in ids.items()}
