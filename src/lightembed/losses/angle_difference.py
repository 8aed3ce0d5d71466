"""AnglE's angle objective: rank scored pairs by their angle difference in complex space.

sentence-transformers calls this term ``AnglELoss``. AnglE's whole training objective, the weighted sum of the cosine,
in-batch and angle terms, is :class:`~lightembed.losses.angle_objective.AnglEObjectiveLoss`.
"""

from __future__ import annotations

from torch import Tensor

from lightembed.losses._common import check_positive, to_float
from lightembed.losses._pairs import scored_pairs
from lightembed.losses.base import EmbeddingLoss
from lightembed.losses.cosent import ranking_loss


def angle_scores(left: Tensor, right: Tensor) -> Tensor:
    """Angle score ``t = |Re z + Im z|`` of each pair ("AnglE-optimized Text Embeddings", Li & Li, 2023).

    Each embedding is read as a complex vector, first half real, second half imaginary: ``u = a + i b`` (left),
    ``v = c + i d`` (right). With ``‖u‖ = sqrt(Σ_k a_k² + b_k²)``::

        z = Σ_k u_k · conj(v_k) / (‖u‖ ‖v‖)
        Re z = Σ_k (a_k c_k + b_k d_k) / (‖u‖ ‖v‖),   Im z = Σ_k (b_k c_k − a_k d_k) / (‖u‖ ‖v‖)

    This is the reference implementation's quotient ``u / v`` (taken as ``u · conj(v) / ‖v‖²`` over the whole vector)
    rescaled by ``‖v‖ / ‖u‖``, summed over dimensions. Larger ``t`` means more similar.

    Args:
        left: ``(M, H)``, ``H`` even.
        right: ``(M, H)``.

    Returns:
        ``(M,)``.
    """
    if left.shape[-1] % 2:
        raise ValueError(
            f"the angle objective splits embeddings into real and imaginary halves: hidden size must be "
            f"even, got {left.shape[-1]}"
        )
    a, b = left.chunk(2, dim=-1)  # (M, H/2) each: real, imaginary
    c, d = right.chunk(2, dim=-1)  # (M, H/2) each
    norms = (left.norm(dim=-1) * right.norm(dim=-1)).clamp_min(1e-12)  # (M,) ‖u‖ ‖v‖
    real = (a * c + b * d).sum(dim=-1) / norms  # (M,)
    imag = (b * c - a * d).sum(dim=-1) / norms  # (M,)
    return (real + imag).abs()  # (M,)


class AngleDifferenceLoss(EmbeddingLoss):
    """The angle objective of AnglE ("AnglE-optimized Text Embeddings", Xianming Li and Jing Li, 2023, arXiv
    2309.12871); sentence-transformers' ``AnglELoss``.

    Cosine similarity saturates near ±1, where its gradient vanishes; AnglE instead ranks pairs by the angle
    difference in complex space, ``t_i = |Re z_i + Im z_i|`` (see :func:`angle_scores`), with the CoSENT ranking form
    (:func:`~lightembed.losses.cosent.ranking_loss`, the same function with another pair score)::

        loss = log(1 + Σ_{(i,j): y_i > y_j} exp((t_j − t_i) / τ))

    Inputs: ``anchor (B, H)`` and ``positive (B, H)`` with ``H`` even (first half real, second half imaginary), and
    either ``labels (B,)`` (scored pairs) or ``negative (B, H) | (B, N, H)`` (triplets, turned into pairs
    ``(anchor, positive) = 1``, ``(anchor, negative) = 0``).

    Args:
        temperature: τ > 0; the score differences are scaled by ``1/τ``.
    """

    def __init__(self, temperature: float = 1.0) -> None:
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
            anchor: ``(B, H)``, ``H`` even.
            positive: ``(B, H)``.
            negative: ``(B, H)`` or ``(B, N, H)``; used only when ``labels`` is None (triplets -> pairs).
            labels: ``(B,)`` gold score of each ``(anchor_i, positive_i)`` pair.
            anchor_ids, positive_ids, negative_ids: unused; accepted so every loss has the same call signature.

        Returns:
            scalar tensor.
        """
        left, right, pair_labels = scored_pairs(anchor, positive, negative, labels, type(self).__name__)
        scores = angle_scores(to_float(left), to_float(right))  # (M,)
        return ranking_loss(scores, pair_labels, self.temperature)
