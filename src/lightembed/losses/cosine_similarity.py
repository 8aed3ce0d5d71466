"""Cosine-similarity regression: the pair cosine is fitted to a gold score by mean squared error."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightembed.losses._common import check_embeddings, check_labels, to_float
from lightembed.losses.base import EmbeddingLoss


class CosineSimilarityLoss(EmbeddingLoss):
    """Cosine-similarity regression ("Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks", Nils Reimers
    and Iryna Gurevych, 2019); sentence-transformers' ``CosineSimilarityLoss``::

        loss = mean_i (cos(anchor_i, positive_i) − y_i)²

    The scores must be on the cosine's scale (STS-B's 0-5 divided by 5), unlike CoSENT where only their order counts.

    Inputs: ``anchor (B, H)``, ``positive (B, H)``, ``labels (B,)`` the gold score of each pair.
    """

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
        cos = F.cosine_similarity(to_float(anchor), to_float(positive), dim=-1)  # (B,)
        return F.mse_loss(cos, scores)
