"""Sentence-BERT's classification objective: a linear softmax classifier over (u, v, |u − v|)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightembed.losses._common import check_embeddings, to_float
from lightembed.losses.base import EmbeddingLoss


class SoftmaxLoss(EmbeddingLoss):
    """Softmax classification of pairs ("Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks", Nils Reimers
    and Iryna Gurevych, 2019); sentence-transformers' ``SoftmaxLoss`` (NLI training)::

        loss = CrossEntropy(W [u; v; |u − v|] + b, y)

    with ``u = anchor``, ``v = positive`` and ``W`` of shape ``(num_labels, 3H)``. The classifier is a submodule of this
    loss, not of the encoder: the stage's optimizer trains it with the encoder (it is among the module's parameters) and
    no export ever sees it. ``embedding_dim`` is required rather than inferred on the first batch: a lazily built head
    would not exist yet when Lightning builds the optimizer, and would never train. GradCache (``micro_batch_size``)
    differentiates the loss with respect to the embeddings only, so it does not train the head yet: train this loss
    without ``micro_batch_size``.

    Inputs: ``anchor (B, H)``, ``positive (B, H)``, ``labels (B,)`` integer class ids in ``[0, num_labels)``.

    Args:
        num_labels: number of classes (3 for NLI: entailment, neutral, contradiction).
        embedding_dim: ``H``, the encoder's embedding size (384 for MiniLM-L6).
    """

    def __init__(self, num_labels: int, embedding_dim: int) -> None:
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {num_labels}")
        if embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be > 0, got {embedding_dim}")
        self.num_labels = num_labels
        self.classifier = nn.Linear(3 * embedding_dim, num_labels)

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
        """Compute the loss: ``anchor (B, H)``, ``positive (B, H)``, ``labels (B,)`` class ids; ids unused. Scalar."""
        if check_embeddings(anchor, positive, negative) is not None:
            raise ValueError("SoftmaxLoss classifies (anchor, positive) pairs; it takes no hard negatives")
        if labels is None or labels.shape != (anchor.shape[0],):
            got = None if labels is None else tuple(labels.shape)
            raise ValueError(f"SoftmaxLoss needs labels of shape (B,) = ({anchor.shape[0]},), got {got}")
        u, v = to_float(anchor), to_float(positive)
        features = torch.cat([u, v, (u - v).abs()], dim=-1)  # (B, 3H)
        if features.shape[-1] != self.classifier.in_features:
            raise ValueError(
                f"SoftmaxLoss was built for embedding_dim={self.classifier.in_features // 3}, "
                f"got embeddings of size {anchor.shape[-1]}"
            )
        logits = self.classifier(features.to(self.classifier.weight.dtype))  # (B, num_labels) head may be half
        return F.cross_entropy(to_float(logits), labels.long())
