"""Triplet loss with a margin on (anchor, positive, negative) triplets."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightembed.losses._common import check_embeddings, to_float
from lightembed.losses._distances import Distance, check_distance, paired_distance
from lightembed.losses.base import EmbeddingLoss


class TripletLoss(EmbeddingLoss):
    """Triplet loss ("FaceNet: A Unified Embedding for Face Recognition and Clustering", Florian Schroff, Dmitry
    Kalenichenko and James Philbin, 2015); sentence-transformers' ``TripletLoss``::

        loss = mean_{i, n} max(0, d(anchor_i, positive_i) − d(anchor_i, negative_in) + m)

    (unsquared distances, as sentence-transformers; FaceNet squares them).

    Inputs: ``anchor (B, H)``, ``positive (B, H)``, ``negative (B, H) | (B, N, H)``.

    Args:
        margin: ``m``: the negative must be this much farther than the positive (5 suits euclidean distances of
            unnormalised embeddings, as sentence-transformers' default; use ~0.1-0.5 with ``"cosine"``).
        distance: ``"euclidean"`` or ``"cosine"`` (``1 − cos``).
    """

    def __init__(self, margin: float = 5.0, distance: Distance = "euclidean") -> None:
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
        """Compute the loss: ``anchor (B, H)``, ``positive (B, H)``, ``negative (B, N, H) | (B, H)``. Scalar."""
        negative = check_embeddings(anchor, positive, negative)  # (B, N, H) | None
        if negative is None:
            raise ValueError("TripletLoss needs negative (B, H) or (B, N, H): one or more negatives per anchor")
        anchor, positive, negative = to_float(anchor), to_float(positive), to_float(negative)
        n_neg = negative.shape[1]
        d_pos = paired_distance(anchor, positive, self.distance)  # (B,)
        d_neg = paired_distance(anchor.repeat_interleave(n_neg, dim=0), negative.flatten(0, 1), self.distance).view(
            -1, n_neg
        )  # (B, N)
        return F.relu(d_pos.unsqueeze(1) - d_neg + self.margin).mean()
