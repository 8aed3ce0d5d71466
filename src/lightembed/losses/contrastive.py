"""Contrastive loss on 0/1-labelled pairs, and its online variant that keeps only the hard pairs."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightembed.losses._common import check_embeddings, check_labels, to_float
from lightembed.losses._distances import Distance, check_distance, paired_distance
from lightembed.losses.base import EmbeddingLoss


def _pairs(anchor: Tensor, positive: Tensor, negative: Tensor | None, labels: Tensor | None, name: str) -> Tensor:
    if check_embeddings(anchor, positive, negative) is not None:
        raise ValueError(f"{name} takes (anchor, positive) pairs with 0/1 labels, not hard negatives")
    labels = check_labels(labels, anchor.shape[0])
    if labels is None:
        raise ValueError(f"{name} needs labels (B,): 1 for a similar pair, 0 for a dissimilar one")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError(f"{name} takes 0/1 labels, got values other than 0 and 1")
    return labels  # (B,)


class ContrastiveLoss(EmbeddingLoss):
    """Contrastive loss ("Dimensionality Reduction by Learning an Invariant Mapping", Raia Hadsell, Sumit Chopra and
    Yann LeCun, 2006); sentence-transformers' ``ContrastiveLoss``.

    With ``d_i = distance(anchor_i, positive_i)`` and ``y_i ∈ {0, 1}`` (1: similar)::

        loss = mean_i ½ (y_i d_i² + (1 − y_i) max(0, m − d_i)²)

    Inputs: ``anchor (B, H)``, ``positive (B, H)`` (the second text of the pair, similar or not), ``labels (B,)`` 0/1.

    Args:
        margin: ``m``: dissimilar pairs are pushed until their distance reaches it.
        distance: ``"cosine"`` (``1 − cos``) or ``"euclidean"``.
    """

    def __init__(self, margin: float = 0.5, distance: Distance = "cosine") -> None:
        super().__init__()
        check_distance(distance)
        self.margin = margin
        self.distance = distance

    def forward(
        self,
        anchor: Tensor,
        positive: Tensor,
        negative: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        anchor_ids: Tensor | None = None,
        positive_ids: Tensor | None = None,
        negative_ids: Tensor | None = None,
    ) -> Tensor:
        """Compute the loss: ``anchor (B, H)``, ``positive (B, H)``, ``labels (B,)`` 0/1; ids unused. Scalar."""
        labels = _pairs(anchor, positive, negative, labels, type(self).__name__)  # (B,)
        d = paired_distance(to_float(anchor), to_float(positive), self.distance)  # (B,)
        return self.pair_loss(d, labels)

    def pair_loss(self, d: Tensor, labels: Tensor) -> Tensor:
        """The loss of the pairs' distances ``d (B,)`` with their 0/1 ``labels (B,)``."""
        return (0.5 * (labels * d.pow(2) + (1 - labels) * F.relu(self.margin - d).pow(2))).mean()


class OnlineContrastiveLoss(ContrastiveLoss):
    """Online contrastive loss: :class:`ContrastiveLoss` on the hard pairs of the batch only (sentence-transformers'
    ``OnlineContrastiveLoss``; the loss of "Dimensionality Reduction by Learning an Invariant Mapping", Hadsell,
    Chopra and LeCun, 2006, with online hard-pair selection).

    A positive pair is hard when its distance exceeds the smallest negative distance, a negative pair when its
    distance is below the largest positive distance (with no pair of the other kind, the mean of the own kind is the
    threshold)::

        loss = Σ_{hard positives} d_i² + Σ_{hard negatives} max(0, m − d_i)²

    (a sum, not a mean, as sentence-transformers). Inputs as :class:`ContrastiveLoss`.

    Args:
        margin: ``m``.
        distance: ``"cosine"`` (``1 − cos``) or ``"euclidean"``.
    """

    def pair_loss(self, d: Tensor, labels: Tensor) -> Tensor:
        """The loss of the hard pairs among ``d (B,)`` with their 0/1 ``labels (B,)``."""
        pos, neg = d[labels == 1], d[labels == 0]
        pos_threshold = neg.min() if len(neg) else pos.mean()
        neg_threshold = pos.max() if len(pos) else neg.mean()
        hard_pos = pos[pos > pos_threshold]
        hard_neg = neg[neg < neg_threshold]
        return hard_pos.pow(2).sum() + F.relu(self.margin - hard_neg).pow(2).sum()
