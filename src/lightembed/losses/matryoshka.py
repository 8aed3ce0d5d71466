"""Matryoshka: train every prefix of the embedding to work alone, so embeddings can be truncated at inference."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from lightembed.losses.base import EmbeddingLoss


class MatryoshkaLoss(EmbeddingLoss):
    """Matryoshka Representation Learning ("Matryoshka Representation Learning", Aditya Kusupati, Gantavya Bhatt,
    Aniket Rege et al., 2022, NeurIPS; sentence-transformers' ``MatryoshkaLoss``).

    With ``x[:d]`` the first ``d`` coordinates of every embedding argument (anchor, positive, negative)::

        loss = Σ_k w_k · inner(anchor[..., :d_k], positive[..., :d_k], negative[..., :d_k], labels, ids...)

    Labels and every keyword argument (text ids, a guide's embeddings) pass through unchanged: only the student's
    embeddings are truncated. By default the prefixes go to the inner loss as they are, and the inner loss normalises
    exactly as it does at full size: :class:`CoSENTLoss`, :class:`InBatchNegativesLoss` (so SimCSE's InfoNCE),
    :class:`AngleDifferenceLoss`, :class:`AnglEObjectiveLoss`, :class:`CosineSimilarityLoss`,
    :class:`MegaBatchMarginLoss`, :class:`GISTEmbedLoss` and every loss with ``distance="cosine"`` score by cosine
    (or a product divided by both norms), so they see each prefix renormalised, as a truncated embedding is used at
    inference. Euclidean-distance losses (triplet, contrastive, batch triplets with ``distance="euclidean"``) and
    :class:`SoftmaxLoss` see the raw prefix unless ``normalize=True``, which scales each prefix to unit length first
    as sentence-transformers' ``MatryoshkaLoss`` always does. The angle term needs every ``d_k`` even; a
    :class:`SoftmaxLoss` head has one size, so it cannot be wrapped.

    Inputs: whatever the inner loss takes, with every embedding of size ``H ≥ max(dims)``.

    Args:
        loss: the inner loss, called once per dimension.
        dims: prefix sizes ``d_k > 0``, distinct; kept sorted from largest to smallest (weights follow their dims).
        weights: ``w_k`` per dimension in the order of ``dims`` as given; None weighs every dimension 1.
        normalize: scale each prefix to unit length before the inner loss (no effect on the cosine losses).
    """

    def __init__(
        self,
        loss: EmbeddingLoss,
        dims: Sequence[int],
        weights: Sequence[float] | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        dims = list(dims)
        if not dims:
            raise ValueError("MatryoshkaLoss needs at least one dimension in dims")
        for d in dims:
            if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
                raise ValueError(f"dims must be positive integers, got {d!r}")
        if len(set(dims)) != len(dims):
            raise ValueError(f"dims must be distinct, got {dims}")
        if weights is None:
            weights = [1.0] * len(dims)
        weights = [float(w) for w in weights]
        if len(weights) != len(dims):
            raise ValueError(f"weights must have one entry per dim: {len(dims)} dims, got {len(weights)} weights")
        for w in weights:
            if not w >= 0:
                raise ValueError(f"weights must be >= 0, got {w!r}")
        order = sorted(range(len(dims)), key=lambda i: -dims[i])  # largest first: a prefix of every later prefix
        self.loss = loss
        self.dims = [dims[i] for i in order]
        self.weights = [weights[i] for i in order]
        self.normalize = normalize

    def _prefix(self, x: Tensor | None, d: int) -> Tensor | None:
        if x is None:
            return None
        return F.normalize(x[..., :d], dim=-1) if self.normalize else x[..., :d]

    def forward(
        self,
        anchor: Tensor,
        positive: Tensor | None = None,
        negative: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs: Tensor | None,
    ) -> Tensor:
        """Compute the weighted sum of the inner loss over the prefixes.

        Args:
            anchor: ``(B, H)``.
            positive: ``(B, H)``, or None for the (text, label) losses.
            negative: ``(B, H)``, ``(B, N, H)`` or None.
            labels: passed through.
            **kwargs: passed through to the inner loss unchanged (``anchor_ids``, ``guide_anchor``, ...).

        Returns:
            scalar tensor.
        """
        size = anchor.shape[-1]
        if self.dims[0] > size:
            raise ValueError(f"dims must be <= the embedding size {size}, got {self.dims[0]}")
        total: Tensor | None = None
        for d, w in zip(self.dims, self.weights, strict=True):
            term = w * self.loss(
                self._prefix(anchor, d), self._prefix(positive, d), self._prefix(negative, d), labels, **kwargs
            )
            total = term if total is None else total + term
        assert total is not None  # the constructor refuses empty dims
        return total
