"""In-batch negatives (InfoNCE / MultipleNegativesRanking) with optional hard negatives and duplicate awareness."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightembed.losses._common import check_embeddings, check_labels, check_positive, to_float

DUPLICATE_MODES = ("positive", "ignore")


def _check_ids(name: str, ids: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
    if ids is None:
        return None
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer text ids, got {ids.dtype}")
    if ids.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(ids.shape)}")
    return ids


def duplicate_mask(
    query_ids: Tensor | None, key_ids: Tensor | None, negative_ids: Tensor | None, num_negatives: int
) -> Tensor | None:
    """Which candidates repeat a positive of each query: ``dup (B, B*(1+N))`` bool, or None without ids.

    Query ``i`` is the pair ``(q_i, k_i)`` (text ids of its query and its own key). The candidates are the keys of
    the batch, then the hard negatives. Candidate ``c`` is a duplicate-positive of query ``i`` when

    - ``c`` is key ``j`` and ``k_j = k_i`` (same text as the own key), ``k_j = q_i`` (same text as the query), or
      ``q_j = q_i`` (the key of another copy of the same query), or
    - ``c`` is a hard negative with id ``n`` and ``n = k_i`` or ``n = q_i``.

    The own key (``c = i``) is always flagged. A missing id tensor disables the rules that need it.

    Args:
        query_ids: ``(B,)`` or None.
        key_ids: ``(B,)`` or None.
        negative_ids: ``(B, N)`` or None.
        num_negatives: ``N`` (0 without hard negatives).
    """
    if query_ids is None and key_ids is None:
        return None
    ref = query_ids if query_ids is not None else key_ids
    batch = ref.shape[0]
    dup_keys = torch.zeros(batch, batch, dtype=torch.bool, device=ref.device)  # (B, B)
    if key_ids is not None:
        dup_keys |= key_ids.unsqueeze(0) == key_ids.unsqueeze(1)  # (B, B) k_j == k_i
    if key_ids is not None and query_ids is not None:
        dup_keys |= key_ids.unsqueeze(0) == query_ids.unsqueeze(1)  # (B, B) k_j == q_i
    if query_ids is not None:
        dup_keys |= query_ids.unsqueeze(0) == query_ids.unsqueeze(1)  # (B, B) q_j == q_i
    dup_negs = torch.zeros(batch, batch * num_negatives, dtype=torch.bool, device=ref.device)  # (B, B*N)
    if negative_ids is not None:
        flat = negative_ids.reshape(-1)  # (B*N,)
        if key_ids is not None:
            dup_negs |= flat.unsqueeze(0) == key_ids.unsqueeze(1)  # (B, B*N) n == k_i
        if query_ids is not None:
            dup_negs |= flat.unsqueeze(0) == query_ids.unsqueeze(1)  # (B, B*N) n == q_i
    return torch.cat([dup_keys, dup_negs], dim=1)  # (B, B*(1+N))


class InBatchNegativesLoss(nn.Module):
    """InfoNCE with in-batch negatives (van den Oord et al. 2018; Henderson et al. 2017 "MultipleNegativesRanking").

    For anchor ``i`` the candidates are the ``B`` positives of the batch and the ``B·N`` hard negatives; with
    ``l_ic = cos(anchor_i, candidate_c) / τ`` (shape ``(B, B*(1+N))``)::

        loss_i = −log( Σ_{c ∈ P(i)} exp(l_ic) / Σ_{c ∈ C(i)} exp(l_ic) )

    Without duplicate information ``P(i) = {positive_i}`` and ``C(i)`` is every candidate (plain cross-entropy).
    Duplicate awareness (AnglE, Li & Li 2023, arXiv 2309.12871): a batch drawn from many pairs can hold the same text
    twice, and then a "negative" is really a positive. Given integer text ids (equal id = identical normalised text),
    candidate ``c`` is a duplicate-positive of anchor ``i`` when its text equals ``positive_i`` or ``anchor_i``, or when
    it is the positive of a row ``j`` whose anchor text equals ``anchor_i``. ``duplicates="positive"`` puts those
    candidates in ``P(i)`` (multi-positive InfoNCE); ``duplicates="ignore"`` removes them from ``C(i)``, keeping
    ``positive_i`` as the single target.

    ``symmetric=True`` averages with the positive->anchor direction (query ``positive_i``, candidates the ``B``
    anchors, duplicates found with the roles of the ids swapped). With ``min_score`` and labels, only rows whose label
    is ``≥ min_score`` are queries (the others remain candidates); the loss is the mean over the query rows, and 0
    (with a grad_fn) when there is none.

    Args:
        temperature: τ > 0; logits are ``cos / τ``.
        symmetric: also apply the loss in the positive->anchor direction and average the two.
        duplicates: ``"positive"`` (count duplicate texts as extra positives) or ``"ignore"`` (drop them from the
            denominator). Has an effect only when ids are passed to ``forward``.
        min_score: with labels, the smallest label a row needs to act as a query (for scored STS pairs); None uses
            every row.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        symmetric: bool = False,
        duplicates: Literal["positive", "ignore"] = "positive",
        min_score: float | None = None,
    ) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        if duplicates not in DUPLICATE_MODES:
            raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_MODES)}, got {duplicates!r}")
        self.temperature = temperature
        self.symmetric = symmetric
        self.duplicates = duplicates
        self.min_score = min_score

    def _per_query(self, logits: Tensor, dup: Tensor | None) -> Tensor:
        """Loss of each query ``(B,)`` from ``logits (B, C)``; query ``i``'s own positive is candidate ``i``."""
        batch = logits.shape[0]
        target = torch.arange(batch, device=logits.device)  # (B,)
        if dup is None:
            return F.cross_entropy(logits, target, reduction="none")  # (B,)
        fill = torch.finfo(logits.dtype).min
        own = F.one_hot(target, logits.shape[1]).bool()  # (B, C)
        if self.duplicates == "ignore":
            logits = logits.masked_fill(dup & ~own, fill)  # (B, C) duplicates leave the denominator
            return F.cross_entropy(logits, target, reduction="none")  # (B,)
        positives = dup | own  # (B, C)
        log_num = torch.logsumexp(logits.masked_fill(~positives, fill), dim=1)  # (B,)
        return torch.logsumexp(logits, dim=1) - log_num  # (B,)

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
            positive: ``(B, H)``; ``positive_i`` is the target of ``anchor_i``.
            negative: hard negatives ``(B, N, H)``, or ``(B, H)`` for ``N = 1``, or None.
            labels: ``(B,)`` pair scores; used only with ``min_score``.
            anchor_ids: ``(B,)`` integer text ids of the anchors, or None.
            positive_ids: ``(B,)`` integer text ids of the positives, or None.
            negative_ids: ``(B, N)`` (or ``(B,)`` for ``N = 1``) integer text ids of the hard negatives, or None.

        Returns:
            scalar tensor.
        """
        negative = check_embeddings(anchor, positive, negative)  # (B, N, H) | None
        batch, hidden = anchor.shape
        num_neg = 0 if negative is None else negative.shape[1]
        labels = check_labels(labels, batch)  # (B,) | None
        anchor_ids = _check_ids("anchor_ids", anchor_ids, (batch,))
        positive_ids = _check_ids("positive_ids", positive_ids, (batch,))
        if negative_ids is not None:
            if negative is None:
                raise ValueError("negative_ids were given without negative embeddings")
            if negative_ids.dim() == 1 and num_neg == 1:
                negative_ids = negative_ids.unsqueeze(1)  # (B, 1)
            negative_ids = _check_ids("negative_ids", negative_ids, (batch, num_neg))

        a = F.normalize(to_float(anchor), dim=-1)  # (B, H)
        p = F.normalize(to_float(positive), dim=-1)  # (B, H)
        candidates = p
        if negative is not None:
            n = F.normalize(to_float(negative), dim=-1).reshape(batch * num_neg, hidden)  # (B*N, H)
            candidates = torch.cat([p, n])  # (B*(1+N), H)
        logits = a @ candidates.T / self.temperature  # (B, B*(1+N))
        per_query = self._per_query(logits, duplicate_mask(anchor_ids, positive_ids, negative_ids, num_neg))  # (B,)

        if self.symmetric:
            logits_back = p @ a.T / self.temperature  # (B, B) query positive_i, candidates the anchors
            back = self._per_query(logits_back, duplicate_mask(positive_ids, anchor_ids, None, 0))  # (B,)
            per_query = (per_query + back) / 2  # (B,)

        if self.min_score is None or labels is None:
            return per_query.mean()
        is_query = (labels >= self.min_score).to(per_query.dtype)  # (B,)
        return (per_query * is_query).sum() / is_query.sum().clamp_min(1.0)  # 0 with a grad_fn when no row qualifies
