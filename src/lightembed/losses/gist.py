"""GISTEmbed: in-batch negatives whose false negatives are masked by a guide model's similarities."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightembed.losses._common import check_embeddings, check_positive, to_float
from lightembed.losses.base import EmbeddingLoss

MARGIN_STRATEGIES = ("absolute", "relative")


def _cosines(left: Tensor, right: Tensor) -> Tensor:
    """``(Q, H), (C, H) -> (Q, C)`` cosine of every pair."""
    return F.normalize(to_float(left), dim=-1) @ F.normalize(to_float(right), dim=-1).T


class GISTEmbedLoss(EmbeddingLoss):
    """GISTEmbed ("GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding Fine-tuning", Aivin
    V. Solatorio, 2024); sentence-transformers' ``GISTEmbedLoss``.

    InfoNCE over the in-batch candidates of anchor ``i`` — the positives, and with ``contrast_anchors`` the other
    anchors, with ``contrast_positives`` the positives scored from ``positive_i``, and any hard negatives — where a
    frozen guide model's similarities drop the false negatives: candidate ``c`` is masked out (logit −∞) when the
    guide scores it above the guide's own-pair score, ``g_ic > g_ii − margin`` (``"absolute"``) or
    ``g_ic > g_ii − margin · |g_ii|`` (``"relative"``). With ``s`` the student's cosines::

        loss_i = −log( exp(s_ii / τ) / Σ_{c unmasked} exp(s_ic / τ) )

    Losses take embeddings, not models: the stage (or caller) embeds the same texts with the guide, without gradient,
    and passes them as ``guide_anchor``, ``guide_positive`` (and ``guide_negative``).

    Inputs: ``anchor (B, H)``, ``positive (B, H)``, optional ``negative (B, H) | (B, N, H)``; ``guide_anchor (B, G)``,
    ``guide_positive (B, G)``, ``guide_negative (B, G) | (B, N, G)`` (the guide's size ``G`` may differ from ``H``).

    Args:
        temperature: τ > 0.
        margin_strategy: ``"absolute"`` or ``"relative"``.
        margin: how far below the own pair's guide score a candidate may be and still be masked.
        contrast_anchors: also contrast each anchor with the other anchors.
        contrast_positives: also contrast each positive with the other positives.
    """

    def __init__(
        self,
        temperature: float = 0.01,
        margin_strategy: Literal["absolute", "relative"] = "absolute",
        margin: float = 0.0,
        contrast_anchors: bool = True,
        contrast_positives: bool = True,
    ) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        if margin_strategy not in MARGIN_STRATEGIES:
            raise ValueError(f"margin_strategy must be one of {', '.join(MARGIN_STRATEGIES)}, got {margin_strategy!r}")
        self.temperature = temperature
        self.margin_strategy = margin_strategy
        self.margin = margin
        self.contrast_anchors = contrast_anchors
        self.contrast_positives = contrast_positives

    def forward(
        self,
        anchor: Tensor,
        positive: Tensor,
        negative: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        guide_anchor: Tensor | None = None,
        guide_positive: Tensor | None = None,
        guide_negative: Tensor | None = None,
        anchor_ids: Tensor | None = None,
        positive_ids: Tensor | None = None,
        negative_ids: Tensor | None = None,
    ) -> Tensor:
        """Compute the loss (shapes in the class docstring; labels and ids unused). Scalar."""
        negative = check_embeddings(anchor, positive, negative)  # (B, N, H) | None
        if guide_anchor is None or guide_positive is None:
            raise ValueError("GISTEmbedLoss needs guide_anchor and guide_positive: the guide's embeddings of the texts")
        guide_negative = check_embeddings(guide_anchor, guide_positive, guide_negative)  # (B, N, G) | None
        if guide_anchor.shape[0] != anchor.shape[0] or (negative is None) != (guide_negative is None):
            raise ValueError(
                "the guide's embeddings must cover the same texts as the student's (anchor, positive, negative)"
            )
        if negative is not None and guide_negative is not None and guide_negative.shape[1] != negative.shape[1]:
            raise ValueError(
                f"guide_negative has {guide_negative.shape[1]} negatives per row, negative {negative.shape[1]}"
            )
        guide_own = _cosines(guide_anchor, guide_positive).diagonal().unsqueeze(1)  # (B, 1) g_ii
        if self.margin_strategy == "absolute":
            threshold = guide_own - self.margin  # (B, 1)
        else:
            threshold = guide_own - guide_own.abs() * self.margin  # (B, 1)
        own = torch.eye(anchor.shape[0], dtype=torch.bool, device=anchor.device)  # (B, B)
        blocks = [(anchor, positive, guide_anchor, guide_positive, own)]
        if self.contrast_anchors:
            blocks.append((anchor, anchor, guide_anchor, guide_anchor, None))
        if self.contrast_positives:
            blocks.append((positive, positive, guide_positive, guide_positive, None))
        if negative is not None and guide_negative is not None:
            blocks.append((anchor, negative.flatten(0, 1), guide_anchor, guide_negative.flatten(0, 1), None))
        logits = []
        for left, right, guide_left, guide_right, keep in blocks:
            masked = _cosines(guide_left, guide_right) > threshold  # (B, C) guide says: as close as the positive
            if keep is not None:
                masked &= ~keep  # the own positive is never masked
            logits.append(_cosines(left, right).masked_fill(masked, float("-inf")))  # (B, C)
        scores = torch.cat(logits, dim=1) / self.temperature  # (B, ΣC)
        return F.cross_entropy(scores, torch.arange(anchor.shape[0], device=anchor.device))
