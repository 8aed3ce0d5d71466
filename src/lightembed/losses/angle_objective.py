"""AnglE's training objective: the weighted sum of the cosine (CoSENT), in-batch negatives and angle terms."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from lightembed.losses._common import check_positive
from lightembed.losses.angle_difference import AngleDifferenceLoss
from lightembed.losses.base import EmbeddingLoss
from lightembed.losses.cosent import CoSENTLoss
from lightembed.losses.in_batch import InBatchNegativesLoss


class AnglEObjectiveLoss(EmbeddingLoss):
    """AnglE's training objective ("AnglE-optimized Text Embeddings", Xianming Li and Jing Li, 2023, arXiv
    2309.12871)::

        loss = w_cos · L_cos + w_ibn · L_ibn + w_angle · L_angle

    - ``L_cos``: :class:`CoSENTLoss` with ``τ_cos`` — ``log(1 + Σ_{y_i > y_j} exp((cos_j − cos_i) / τ_cos))``;
    - ``L_ibn``: :class:`InBatchNegativesLoss` with ``τ_ibn``, duplicate-aware through the text ids;
    - ``L_angle``: :class:`AngleDifferenceLoss` with ``τ_angle`` — the same ranking form on the complex angle score.

    The defaults follow the paper (``τ_cos = τ_ibn = 0.05``, ``τ_angle = 1.0``, all weights 1). A weight of 0 skips its
    term entirely, including what that term requires: the cosine and angle terms need labels or hard negatives, the
    in-batch term needs neither.

    Inputs: ``anchor (B, H)``, ``positive (B, H)`` (``H`` even when the angle term is on), optional hard negatives
    ``negative (B, H) | (B, N, H)``, optional pair scores ``labels (B,)`` and optional integer text ids
    ``anchor_ids (B,)``, ``positive_ids (B,)``, ``negative_ids (B, N)`` for the in-batch term's duplicate handling.

    sentence-transformers' ``AnglELoss`` is the angle term alone (:class:`AngleDifferenceLoss` here).

    Args:
        cosine_weight: ``w_cos ≥ 0``.
        ibn_weight: ``w_ibn ≥ 0``.
        angle_weight: ``w_angle ≥ 0``.
        cosine_temperature: ``τ_cos > 0``.
        ibn_temperature: ``τ_ibn > 0``.
        angle_temperature: ``τ_angle > 0``.
        ibn_min_score: with labels, the smallest label a row needs to act as an in-batch query (None: every row).
        ibn_symmetric: also apply the in-batch term in the positive->anchor direction and average the two.
        duplicates: how the in-batch term treats duplicate texts, ``"positive"`` or ``"ignore"``.
        ibn_candidates: the in-batch term's candidates, ``"positives"`` (the batch's positives and hard negatives) or
            ``"all"`` (every other text of the batch, both sides of each pair as queries, as AnglE's reference code).
    """

    def __init__(
        self,
        cosine_weight: float = 1.0,
        ibn_weight: float = 1.0,
        angle_weight: float = 1.0,
        cosine_temperature: float = 0.05,
        ibn_temperature: float = 0.05,
        angle_temperature: float = 1.0,
        ibn_min_score: float | None = None,
        ibn_symmetric: bool = False,
        duplicates: Literal["positive", "ignore"] = "positive",
        ibn_candidates: Literal["positives", "all"] = "positives",
    ) -> None:
        super().__init__()
        weights = {"cosine_weight": cosine_weight, "ibn_weight": ibn_weight, "angle_weight": angle_weight}
        for name, value in weights.items():
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not any(weights.values()):
            raise ValueError(f"at least one of {', '.join(weights)} must be > 0; all are 0")
        for name, value in (
            ("cosine_temperature", cosine_temperature),
            ("ibn_temperature", ibn_temperature),
            ("angle_temperature", angle_temperature),
        ):
            check_positive(name, value)
        self.cosine_weight = cosine_weight
        self.ibn_weight = ibn_weight
        self.angle_weight = angle_weight
        self.cosine = CoSENTLoss(temperature=cosine_temperature) if cosine_weight > 0 else None
        self.in_batch = (
            InBatchNegativesLoss(
                temperature=ibn_temperature,
                symmetric=ibn_symmetric,
                duplicates=duplicates,
                min_score=ibn_min_score,
                candidates=ibn_candidates,
            )
            if ibn_weight > 0
            else None
        )
        self.angle = AngleDifferenceLoss(temperature=angle_temperature) if angle_weight > 0 else None

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
            anchor: ``(B, H)`` (``H`` even when the angle term is on).
            positive: ``(B, H)``.
            negative: hard negatives ``(B, H)`` or ``(B, N, H)``, or None.
            labels: ``(B,)`` pair scores, or None (then the cosine and angle terms rank triplet pairs).
            anchor_ids, positive_ids, negative_ids: integer text ids passed to the in-batch term.

        Returns:
            scalar tensor.
        """
        total: Tensor | None = None
        if self.cosine is not None:
            total = self.cosine_weight * self.cosine(anchor, positive, negative, labels)
        if self.in_batch is not None:
            term = self.ibn_weight * self.in_batch(
                anchor,
                positive,
                negative,
                labels,
                anchor_ids=anchor_ids,
                positive_ids=positive_ids,
                negative_ids=negative_ids,
            )
            total = term if total is None else total + term
        if self.angle is not None:
            term = self.angle_weight * self.angle(anchor, positive, negative, labels)
            total = term if total is None else total + term
        assert total is not None  # the constructor refuses all-zero weights
        return total
