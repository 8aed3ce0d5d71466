"""Cosine-similarity regression: the pair cosine is fitted to a gold score by mean squared error."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightembed.losses._common import check_embeddings, check_labels, check_positive, to_float
from lightembed.losses.base import EmbeddingLoss


class CosineSimilarityLoss(EmbeddingLoss):
    """Cosine-similarity regression ("Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks", Nils Reimers
    and Iryna Gurevych, 2019); sentence-transformers' ``CosineSimilarityLoss``::

        loss = mean_i (cos(anchor_i, positive_i) − y_i)²

    The targets must be on the cosine's scale, unlike CoSENT's where only their order counts: ``y_i = labels_i /
    score_scale`` (``score_scale: 5.0`` for STS-B's 0-5 scores). A target outside [-1, 1] is an error naming the
    option rather than a regression that can never fit.

    Inputs: ``anchor (B, H)``, ``positive (B, H)``, ``labels (B,)`` the gold score of each pair.

    Args:
        score_scale: > 0; the gold scores are divided by it.
    """

    def __init__(self, score_scale: float = 1.0) -> None:
        super().__init__()
        check_positive("score_scale", score_scale)
        self.score_scale = float(score_scale)

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
        """Compute the loss: ``anchor (B, H)``, ``positive (B, H)``, ``labels (B,)``; ids unused. Scalar."""
        if check_embeddings(anchor, positive, negative) is not None:
            raise ValueError("CosineSimilarityLoss takes scored (anchor, positive) pairs, not hard negatives")
        scores = check_labels(labels, anchor.shape[0])  # (B,)
        if scores is None:
            raise ValueError("CosineSimilarityLoss needs labels (B,): the gold similarity of each pair")
        scores = scores / self.score_scale
        if scores.numel() and float(scores.abs().max()) > 1.0:
            raise ValueError(
                f"CosineSimilarityLoss fits the cosine (in [-1, 1]) to score / score_scale, but a score of "
                f"{float(scores.abs().max() * self.score_scale):g} with score_scale={self.score_scale:g} is out of "
                "that range: set the loss option score_scale (5.0 for STS-B's 0-5 scores)"
            )
        cos = F.cosine_similarity(to_float(anchor), to_float(positive), dim=-1)  # (B,)
        return F.mse_loss(cos, scores)
