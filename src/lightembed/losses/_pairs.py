"""Scored pairs for the ranking losses (CoSENT, angle): from ``labels`` or from a triplet's hard negatives."""

from __future__ import annotations

import torch
from torch import Tensor

from lightembed.losses._common import check_embeddings, check_labels


def scored_pairs(
    anchor: Tensor, positive: Tensor, negative: Tensor | None, labels: Tensor | None, loss_name: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(left (M, H), right (M, H), labels (M,))``: the pairs a ranking loss compares.

    - ``labels`` given: the ``B`` pairs ``(anchor_i, positive_i)`` scored by ``labels_i`` (``M = B``).
    - ``labels`` None and ``negative`` given (triplets): ``(anchor_i, positive_i)`` with label 1 and
      ``(anchor_i, negative_in)`` with label 0 for each of the ``N`` negatives (``M = B (1 + N)``).

    Giving both, or neither, raises: a ranking loss would otherwise have to silently drop one of them.

    Args:
        anchor: ``(B, H)``.
        positive: ``(B, H)``.
        negative: ``(B, N, H)``, ``(B, H)`` or None.
        labels: ``(B,)`` or None.
        loss_name: named in error messages.
    """
    negative = check_embeddings(anchor, positive, negative)  # (B, N, H) | None
    labels = check_labels(labels, anchor.shape[0])  # (B,) | None
    if labels is not None and negative is not None:
        raise ValueError(
            f"{loss_name} takes either labels (scored pairs) or negative (triplets), not both; "
            "drop the negatives from the batch or use an in-batch loss for them"
        )
    if labels is not None:
        return anchor, positive, labels
    if negative is None:
        raise ValueError(
            f"{loss_name} needs labels (B,) to rank scored pairs, or negative (B, H) / (B, N, H) to build "
            "(anchor, positive) = 1 and (anchor, negative) = 0 pairs from triplets; got neither"
        )
    batch, n_neg, hidden = negative.shape
    left = torch.cat([anchor, anchor.repeat_interleave(n_neg, dim=0)])  # (B*(1+N), H)
    right = torch.cat([positive, negative.reshape(batch * n_neg, hidden)])  # (B*(1+N), H)
    pair_labels = torch.cat(
        [anchor.new_ones(batch, dtype=torch.float32), anchor.new_zeros(batch * n_neg, dtype=torch.float32)]
    )  # (B*(1+N),)
    return left, right, pair_labels
