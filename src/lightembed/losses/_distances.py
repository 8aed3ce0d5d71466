"""Distances shared by the margin losses (contrastive, triplet, the batch triplet family)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Distance = Literal["cosine", "euclidean"]
DISTANCES = ("cosine", "euclidean")


def check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")


def paired_distance(left: Tensor, right: Tensor, distance: Distance) -> Tensor:
    """Distance of each row pair: ``(M, H), (M, H) -> (M,)``; cosine distance is ``1 − cos``."""
    if distance == "cosine":
        return 1 - F.cosine_similarity(left, right, dim=-1)  # (M,)
    return F.pairwise_distance(left, right, eps=0.0)  # (M,) ‖left − right‖₂


def pairwise_distances(embeddings: Tensor, distance: Distance) -> Tensor:
    """Distance between every two rows: ``(B, H) -> (B, B)``."""
    if distance == "cosine":
        unit = F.normalize(embeddings, dim=-1)  # (B, H)
        return 1 - unit @ unit.T  # (B, B)
    # cdist's backward gives 0 (not NaN) at the zero self-distances; compute_mode keeps it exact at small sizes
    return torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")  # (B, B)


def class_ids(labels: Tensor | None, batch_size: int, loss_name: str) -> Tensor:
    """Check ``labels (B,)`` integer class ids of the (text, label) losses."""
    if labels is None:
        raise ValueError(f"{loss_name} needs labels (B,): the class id of each anchor")
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape (B,) = ({batch_size},), got {tuple(labels.shape)}")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError(f"{loss_name} takes integer class ids as labels, got non-integer values")
    return labels
