"""MegaBatchMargin: a margin loss whose negative is the hardest other positive of the (mega-)batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightembed.losses._common import check_embeddings, to_float
from lightembed.losses.base import EmbeddingLoss


class MegaBatchMarginLoss(EmbeddingLoss):
    """MegaBatchMargin ("ParaNMT-50M: Pushing the Limits of Paraphrastic Sentence Embeddings with Millions of Machine
    Translations", John Wieting and Kevin Gimpel, 2018); sentence-transformers' ``MegaBatchMarginLoss``.

    With ``s_ij = cos(anchor_i, candidate_j)``, the candidates being the batch's positives (then any hard negatives),
    each anchor's negative is its most similar candidate other than its own positive::

        loss = mean_i [max(0, m⁺ − s_ii) + max(0, max_{j ≠ i} s_ij − m⁻)]

    The "mega-batch" is the batch: use GradCache (``micro_batch_size``) to make it large, as the paper's mega-batches
    of several mini-batches.

    Inputs: ``anchor (B, H)``, ``positive (B, H)``, optional ``negative (B, H) | (B, N, H)``.

    Args:
        positive_margin: ``m⁺``: the positive's cosine should reach it.
        negative_margin: ``m⁻``: the hardest negative's cosine should stay below it.
    """

    def __init__(self, positive_margin: float = 0.8, negative_margin: float = 0.3) -> None:
        super().__init__()
        self.positive_margin = positive_margin
        self.negative_margin = negative_margin

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
        """Compute the loss: ``anchor (B, H)``, ``positive (B, H)``, ``negative (B, N, H) | (B, H) | None``. Scalar."""
        negative = check_embeddings(anchor, positive, negative)  # (B, N, H) | None
        candidates = positive if negative is None else torch.cat([positive, negative.flatten(0, 1)])  # (C, H)
        a = F.normalize(to_float(anchor), dim=-1)  # (B, H)
        c = F.normalize(to_float(candidates), dim=-1)  # (C, H)
        scores = a @ c.T  # (B, C) cosines
        rows = torch.arange(anchor.shape[0], device=anchor.device)  # (B,)
        own = scores[rows, rows]  # (B,)
        hardest = scores.index_put((rows, rows), own.new_full((), float("-inf"))).max(dim=1).values  # (B,)
        return (F.relu(self.positive_margin - own) + F.relu(hardest - self.negative_margin)).mean()
