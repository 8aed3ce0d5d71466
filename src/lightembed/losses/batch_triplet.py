"""The batch triplet family on (embedding, class id) batches: batch-hard, batch-semi-hard, batch-all, soft-margin.

Every anchor's positives are the other rows of its class and its negatives the rows of other classes, so a batch
needs several rows per class (a P×K sampler: P classes, K rows each). The four losses differ only in which
triplets they keep, so they share one file and one helper.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from lightembed.losses._common import to_float
from lightembed.losses._distances import Distance, check_distance, class_ids, pairwise_distances
from lightembed.losses.base import EmbeddingLoss


class _BatchTripletLoss(EmbeddingLoss, ABC):
    """Shared input handling: ``anchor (B, H)`` embeddings and ``labels (B,)`` class ids; no positive or negative."""

    def __init__(self, margin: float, distance: Distance) -> None:
        super().__init__()
        check_distance(distance)
        self.margin = margin
        self.distance = distance

    def forward(
        self,
        anchor: Tensor,
        positive: Tensor | None = None,
        negative: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        anchor_ids: Tensor | None = None,
        positive_ids: Tensor | None = None,
        negative_ids: Tensor | None = None,
    ) -> Tensor:
        """Compute the loss: ``anchor (B, H)``, ``labels (B,)`` class ids; ids unused (the signature every loss has)."""
        return self.triplet_loss(*self._masks(anchor, positive, negative, labels))

    @abstractmethod
    def triplet_loss(self, dist: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        """The loss from ``dist (B, B)`` and the positive/negative masks ``(B, B)``: what each variant keeps."""

    def _masks(
        self, anchor: Tensor, positive: Tensor | None, negative: Tensor | None, labels: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``dist (B, B)``, ``pos (B, B)`` (same class, not self) and ``neg (B, B)`` (other class)."""
        name = type(self).__name__
        if positive is not None or negative is not None:
            raise ValueError(
                f"{name} takes (text, label) batches: pass the embeddings as anchor and no positive/negative"
            )
        if anchor.dim() != 2:
            raise ValueError(f"anchor must have shape (B, H), got {tuple(anchor.shape)}")
        labels = class_ids(labels, anchor.shape[0], name)  # (B,)
        dist = pairwise_distances(to_float(anchor), self.distance)  # (B, B)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)  # (B, B)
        eye = torch.eye(len(labels), dtype=torch.bool, device=anchor.device)  # (B, B)
        return dist, same & ~eye, ~same

    def _hardest(self, dist: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Hardest positive and negative distance of each anchor ``(B,)`` each, and which anchors have both."""
        hardest_pos = dist.masked_fill(~pos, float("-inf")).max(dim=1).values  # (B,)
        hardest_neg = dist.masked_fill(~neg, float("inf")).min(dim=1).values  # (B,)
        valid = pos.any(dim=1) & neg.any(dim=1)  # (B,)
        return hardest_pos, hardest_neg, valid


def _mean_over(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over the ``valid`` rows; 0 with a grad_fn when none is (a batch of one class)."""
    return values.where(valid, values.new_zeros(())).sum() / valid.sum().clamp_min(1)


class BatchHardTripletLoss(_BatchTripletLoss):
    """Batch-hard triplet loss ("In Defense of the Triplet Loss for Person Re-Identification", Alexander Hermans,
    Lucas Beyer and Bastian Leibe, 2017); sentence-transformers' ``BatchHardTripletLoss``. For each anchor ``i``, its
    farthest positive and nearest negative::

        loss = mean_i max(0, max_{j: y_j = y_i, j ≠ i} d_ij − min_{k: y_k ≠ y_i} d_ik + m)

    Anchors without a positive or a negative in the batch are left out of the mean.

    Inputs: ``anchor (B, H)`` embeddings, ``labels (B,)`` integer class ids.

    Args:
        margin: ``m``.
        distance: ``"euclidean"`` or ``"cosine"`` (``1 − cos``).
    """

    def __init__(self, margin: float = 5.0, distance: Distance = "euclidean") -> None:
        super().__init__(margin, distance)

    def triplet_loss(self, dist: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        hardest_pos, hardest_neg, valid = self._hardest(dist, pos, neg)
        return _mean_over(F.relu(hardest_pos - hardest_neg + self.margin), valid)


class BatchHardSoftMarginTripletLoss(_BatchTripletLoss):
    """Batch-hard triplet loss with the soft margin ``log(1 + exp(x))`` in place of ``max(0, x + m)`` ("In Defense
    of the Triplet Loss for Person Re-Identification", Hermans, Beyer and Leibe, 2017); sentence-transformers'
    ``BatchHardSoftMarginTripletLoss``::

        loss = mean_i softplus(max_{j: y_j = y_i, j ≠ i} d_ij − min_{k: y_k ≠ y_i} d_ik)

    Inputs: ``anchor (B, H)`` embeddings, ``labels (B,)`` integer class ids.

    Args:
        distance: ``"euclidean"`` or ``"cosine"`` (``1 − cos``).
    """

    def __init__(self, distance: Distance = "euclidean") -> None:
        super().__init__(0.0, distance)

    def triplet_loss(self, dist: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        hardest_pos, hardest_neg, valid = self._hardest(dist, pos, neg)
        return _mean_over(F.softplus(hardest_pos - hardest_neg), valid)


class BatchAllTripletLoss(_BatchTripletLoss):
    """Batch-all triplet loss ("In Defense of the Triplet Loss for Person Re-Identification", Hermans, Beyer and
    Leibe, 2017); sentence-transformers' ``BatchAllTripletLoss``. Every valid triplet ``(i, j, k)`` (``y_j = y_i``,
    ``j ≠ i``, ``y_k ≠ y_i``) counts; the sum is divided by the number of triplets that still violate the margin::

        loss = Σ_{ijk} max(0, d_ij − d_ik + m) / #{ijk: d_ij − d_ik + m > 0}

    Inputs: ``anchor (B, H)`` embeddings, ``labels (B,)`` integer class ids.

    Args:
        margin: ``m``.
        distance: ``"euclidean"`` or ``"cosine"`` (``1 − cos``).
    """

    def __init__(self, margin: float = 5.0, distance: Distance = "euclidean") -> None:
        super().__init__(margin, distance)

    def triplet_loss(self, dist: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        loss = F.relu(dist.unsqueeze(2) - dist.unsqueeze(1) + self.margin)  # (B, B, B) [i, j, k] = d_ij − d_ik + m
        loss = loss * (pos.unsqueeze(2) & neg.unsqueeze(1))  # (B, B, B) valid triplets only
        return loss.sum() / (loss > 1e-16).sum().clamp_min(1)


class BatchSemiHardTripletLoss(_BatchTripletLoss):
    """Batch-semi-hard triplet loss ("FaceNet: A Unified Embedding for Face Recognition and Clustering", Florian
    Schroff, Dmitry Kalenichenko and James Philbin, 2015); sentence-transformers' ``BatchSemiHardTripletLoss``. For
    each positive pair ``(i, j)`` the negative is the nearest one still farther than the positive,
    ``n_ij = min{d_ik : y_k ≠ y_i, d_ik > d_ij}``, or the farthest negative when none is::

        loss = mean_{(i, j): y_j = y_i, j ≠ i} max(0, d_ij − n_ij + m)

    Inputs: ``anchor (B, H)`` embeddings, ``labels (B,)`` integer class ids.

    Args:
        margin: ``m``.
        distance: ``"euclidean"`` or ``"cosine"`` (``1 − cos``).
    """

    def __init__(self, margin: float = 5.0, distance: Distance = "euclidean") -> None:
        super().__init__(margin, distance)

    def triplet_loss(self, dist: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        batch = dist.shape[0]
        # each row's negative distances in increasing order, non-negatives last (inf): a binary search then finds the
        # nearest negative beyond d_ij in O(B² log B) instead of a (B, B, B) comparison
        sorted_neg = dist.masked_fill(~neg, float("inf")).sort(dim=1).values  # (B, B)
        beyond = torch.searchsorted(sorted_neg.detach().contiguous(), dist.detach().contiguous(), right=True)  # (B, B)
        outside = sorted_neg.gather(1, beyond.clamp(max=batch - 1))  # (B, B) inf when no negative is beyond d_ij
        farthest = dist.masked_fill(~neg, float("-inf")).max(dim=1, keepdim=True).values  # (B, 1)
        semi_hard = torch.where(torch.isfinite(outside), outside, farthest)  # (B, B)
        valid = pos & neg.any(dim=1, keepdim=True)  # (B, B)
        return _mean_over(F.relu(dist - semi_hard + self.margin), valid)
