"""CoSENT: rank the cosine similarities of scored pairs in the order of their labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightembed.losses._common import check_positive, to_float
from lightembed.losses._pairs import scored_pairs
from lightembed.losses.base import EmbeddingLoss


def ranking_loss(scores: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """``log(1 + Σ_{(i,j): y_i > y_j} exp((s_j − s_i) / τ))``: every pair scored lower must also be labelled lower.

    Computed as a logsumexp over ``[0, (s_j − s_i)/τ for all (i, j)]`` with the pairs where ``y_i ≤ y_j`` filled by
    the dtype's minimum, so it is stable for small τ and is exactly 0 (still with a grad_fn) when all labels tie.

    Args:
        scores: ``(M,)`` similarity of each pair.
        labels: ``(M,)`` gold score of each pair (only their order matters).
        temperature: τ > 0.

    Returns:
        scalar tensor.
    """
    diff = (scores.unsqueeze(0) - scores.unsqueeze(1)) / temperature  # (M, M) diff[i, j] = (s_j - s_i) / τ
    ordered = labels.unsqueeze(1) > labels.unsqueeze(0)  # (M, M) y_i > y_j
    diff = diff.masked_fill(~ordered, torch.finfo(diff.dtype).min)  # (M, M)
    zero = diff.new_zeros(1)  # (1,) the "1 +" inside the log
    return torch.logsumexp(torch.cat([zero, diff.flatten()]), dim=0)  # scalar


class CoSENTLoss(EmbeddingLoss):
    """CoSENT ("CoSENT (1): a more effective sentence vector scheme than Sentence-BERT", Jianlin Su, 2022, blog post
    https://kexue.fm/archives/8847), the cosine objective of AnglE ("AnglE-optimized Text Embeddings", Xianming Li
    and Jing Li, 2023, arXiv 2309.12871).

    With ``s_i = cos(anchor_i, positive_i)`` and gold scores ``y_i``::

        loss = log(1 + Σ_{(i,j): y_i > y_j} exp((s_j − s_i) / τ))

    Only the order of the labels matters, so any score scale (0-5 STS, 0/1 pairs) works.

    Inputs: ``anchor (B, H)`` and ``positive (B, H)``, and either ``labels (B,)`` (scored pairs) or
    ``negative (B, H) | (B, N, H)`` (triplets, turned into pairs ``(anchor, positive) = 1``,
    ``(anchor, negative) = 0``).

    Args:
        temperature: τ > 0; the pair differences are scaled by ``1/τ`` (the reference code's scale 20 is τ = 0.05).
    """

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = temperature

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
        """Compute the loss.

        Args:
            anchor: ``(B, H)``.
            positive: ``(B, H)``.
            negative: ``(B, H)`` or ``(B, N, H)``; used only when ``labels`` is None (triplets -> pairs).
            labels: ``(B,)`` gold score of each ``(anchor_i, positive_i)`` pair.
            anchor_ids, positive_ids, negative_ids: unused; accepted so every loss has the same call signature.

        Returns:
            scalar tensor.
        """
        left, right, pair_labels = scored_pairs(anchor, positive, negative, labels, type(self).__name__)
        scores = F.cosine_similarity(to_float(left), to_float(right), dim=-1)  # (M,)
        return ranking_loss(scores, pair_labels, self.temperature)
