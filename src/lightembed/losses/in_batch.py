"""In-batch negatives (InfoNCE / MultipleNegativesRanking) with optional hard negatives and duplicate awareness."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightembed.losses._common import check_embeddings, check_labels, check_positive, to_float
from lightembed.losses.base import EmbeddingLoss

DUPLICATE_MODES = ("positive", "ignore")
CANDIDATE_MODES = ("positives", "all")


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
    ids, known = batch_text_ids(query_ids, key_ids, negative_ids, batch, num_negatives)
    partner = pair_partners(batch, num_negatives, ref.device)
    # the all-texts rules with the queries as the only query rows, read on the keys and negatives
    return all_texts_duplicate_mask(ids, known, partner, batch)[:, batch:]  # (B, B*(1+N))


def batch_text_ids(
    query_ids: Tensor | None, key_ids: Tensor | None, negative_ids: Tensor | None, batch: int, num_negatives: int
) -> tuple[Tensor, Tensor]:
    """Text ids of a batch's texts in the order queries, keys, hard negatives (``T = 2B + B·N``): ``ids (T,)`` and
    ``known (T,)`` bool, False for the texts of a missing id tensor (their ids are placeholders). One of
    ``query_ids`` and ``key_ids`` must be given."""
    ref = query_ids if query_ids is not None else key_ids
    parts = [(query_ids, batch), (key_ids, batch), (negative_ids, batch * num_negatives)]
    ids = torch.cat([ref.new_zeros(size) if x is None else x.reshape(-1) for x, size in parts])  # (T,)
    known = torch.cat([torch.full((size,), x is not None, device=ref.device) for x, size in parts])  # (T,)
    return ids, known


def pair_partners(batch: int, num_negatives: int, device: torch.device) -> Tensor:
    """``(T,)`` index of each text's partner, the other side of its pair, for texts ordered queries, keys, hard
    negatives (``T = 2B + B·N``); ``-1`` for the hard negatives."""
    index = torch.arange(2 * batch, device=device)  # (2B,)
    return torch.cat([(index + batch) % (2 * batch), index.new_full((batch * num_negatives,), -1)])  # (T,)


def all_texts_duplicate_mask(ids: Tensor, known: Tensor, partner: Tensor, num_queries: int) -> Tensor:
    """Which texts repeat a positive of each query when every text is a candidate: ``dup (Q, T)`` bool.

    The texts are the ``2B`` pair sides, then the hard negatives (see :func:`batch_text_ids`); query ``r`` is text
    ``r`` (``Q = 2B`` with ``candidates="all"``, the ``B`` first sides for :func:`duplicate_mask`), whose own positive
    is its partner (the other side of its pair). Text ``c`` is a duplicate-positive of query ``r`` when its id equals
    the query's or the partner's, or when ``c``'s own partner has the query's id (the other side of a copy of the
    query). A text is never its own duplicate, and a text without an id matches nothing.

    Args:
        ids: ``(T,)`` text id of every text (any value where ``known`` is False).
        known: ``(T,)`` bool, whether the text has an id.
        partner: ``(T,)`` index of each text's partner, ``-1`` for hard negatives.
        num_queries: ``Q``, the number of leading texts that are queries.
    """

    def same(x: Tensor, x_known: Tensor, y: Tensor, y_known: Tensor) -> Tensor:  # (Q, T): y_r == x_c, both known
        return (x.unsqueeze(0) == y.unsqueeze(1)) & x_known.unsqueeze(0) & y_known.unsqueeze(1)

    has_partner = partner >= 0  # (T,)
    partner_ids = ids[partner.clamp_min(0)]  # (T,)
    partner_known = known[partner.clamp_min(0)] & has_partner  # (T,)
    q_ids, q_known = ids[:num_queries], known[:num_queries]  # (Q,) each
    qp_ids, qp_known = partner_ids[:num_queries], partner_known[:num_queries]  # (Q,) each
    dup = same(ids, known, q_ids, q_known)  # (Q, T) same text as the query
    dup |= same(ids, known, qp_ids, qp_known)  # (Q, T) same text as the query's positive
    dup |= same(partner_ids, partner_known, q_ids, q_known)  # (Q, T) the positive of a copy of the query
    dup[torch.arange(num_queries), torch.arange(num_queries)] = False  # the query itself is no candidate
    return dup


class InBatchNegativesLoss(EmbeddingLoss):
    """InfoNCE with in-batch negatives ("Representation Learning with Contrastive Predictive Coding", Aaron van den
    Oord, Yazhe Li and Oriol Vinyals, 2018; the MultipleNegativesRanking loss of "Efficient Natural Language Response
    Suggestion for Smart Reply", Matthew Henderson et al., 2017).

    For anchor ``i`` the candidates are the ``B`` positives of the batch and the ``B·N`` hard negatives; with
    ``l_ic = cos(anchor_i, candidate_c) / τ`` (shape ``(B, B*(1+N))``)::

        loss_i = −log( Σ_{c ∈ P(i)} exp(l_ic) / Σ_{c ∈ C(i)} exp(l_ic) )

    Without duplicate information ``P(i) = {positive_i}`` and ``C(i)`` is every candidate (plain cross-entropy).
    Duplicate awareness ("AnglE-optimized Text Embeddings", Xianming Li and Jing Li, 2023): a batch drawn from many
    pairs can hold the same text twice, and then a "negative" is really a positive. Given integer text ids (equal id =
    identical normalised text), candidate ``c`` is a duplicate-positive of anchor ``i`` when its text equals
    ``positive_i`` or ``anchor_i``, or when it is the positive of a row ``j`` whose anchor text equals ``anchor_i``.
    ``duplicates="positive"`` puts those candidates in ``P(i)`` (multi-positive InfoNCE); ``duplicates="ignore"``
    removes them from ``C(i)``, keeping ``positive_i`` as the single target.

    ``symmetric=True`` averages with the positive->anchor direction (query ``positive_i``, candidates the ``B``
    anchors, duplicates found with the roles of the ids swapped).

    ``candidates="all"`` makes every text of the batch a candidate, as AnglE's reference implementation does: both
    sides of every pair are queries (``2B`` of them), the own positive is the other side of the pair, and the
    candidates are the other ``2B − 1`` pair texts and the hard negatives, so texts on the query's own side are
    negatives too. The duplicate rules are the same read over all texts (see :func:`all_texts_duplicate_mask`). Both
    directions are already in the mean, so ``symmetric`` is refused with it.

    With ``min_score`` and labels, only rows whose label is ``≥ min_score`` are queries (both sides of the pair with
    ``candidates="all"``; the others remain candidates); the loss is the mean over the query rows, and 0 (with a
    grad_fn) when there is none.

    Args:
        temperature: τ > 0; logits are ``cos / τ``.
        symmetric: also apply the loss in the positive->anchor direction and average the two.
        duplicates: ``"positive"`` (count duplicate texts as extra positives) or ``"ignore"`` (drop them from the
            denominator). Has an effect only when ids are passed to ``forward``.
        min_score: with labels, the smallest label a row needs to act as a query (for scored STS pairs); None uses
            every row.
        candidates: ``"positives"`` (the batch's positives and hard negatives) or ``"all"`` (every other text of the
            batch, both sides of each pair as queries).
    """

    def __init__(
        self,
        temperature: float = 0.05,
        symmetric: bool = False,
        duplicates: Literal["positive", "ignore"] = "positive",
        min_score: float | None = None,
        candidates: Literal["positives", "all"] = "positives",
    ) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        if duplicates not in DUPLICATE_MODES:
            raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_MODES)}, got {duplicates!r}")
        if candidates not in CANDIDATE_MODES:
            raise ValueError(f"candidates must be one of {', '.join(CANDIDATE_MODES)}, got {candidates!r}")
        if symmetric and candidates == "all":
            raise ValueError(
                "symmetric=True has no meaning with candidates='all': both sides of each pair are queries already"
            )
        self.temperature = temperature
        self.symmetric = symmetric
        self.duplicates = duplicates
        self.min_score = min_score
        self.candidates = candidates

    def _per_query(self, logits: Tensor, dup: Tensor | None, target: Tensor | None = None) -> Tensor:
        """Loss of each query ``(Q,)`` from ``logits (Q, C)``; query ``i``'s own positive is candidate ``target[i]``
        (default ``i``). Candidates that must not count at all are already at the dtype's minimum in ``logits``."""
        if target is None:
            target = torch.arange(logits.shape[0], device=logits.device)  # (Q,)
        if dup is None:
            return F.cross_entropy(logits, target, reduction="none")  # (Q,)
        fill = torch.finfo(logits.dtype).min
        own = F.one_hot(target, logits.shape[1]).bool()  # (Q, C)
        if self.duplicates == "ignore":
            logits = logits.masked_fill(dup & ~own, fill)  # (Q, C) duplicates leave the denominator
            return F.cross_entropy(logits, target, reduction="none")  # (Q,)
        positives = dup | own  # (Q, C)
        log_num = torch.logsumexp(logits.masked_fill(~positives, fill), dim=1)  # (Q,)
        return torch.logsumexp(logits, dim=1) - log_num  # (Q,)

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
        n = None if negative is None else F.normalize(to_float(negative), dim=-1).reshape(batch * num_neg, hidden)
        if self.candidates == "all":
            per_query = self._all_texts(a, p, n, anchor_ids, positive_ids, negative_ids)  # (2B,)
            return self._reduce(per_query, None if labels is None else labels.repeat(2))
        candidates = p if n is None else torch.cat([p, n])  # (B*(1+N), H)
        logits = a @ candidates.T / self.temperature  # (B, B*(1+N))
        per_query = self._per_query(logits, duplicate_mask(anchor_ids, positive_ids, negative_ids, num_neg))  # (B,)

        if self.symmetric:
            logits_back = p @ a.T / self.temperature  # (B, B) query positive_i, candidates the anchors
            back = self._per_query(logits_back, duplicate_mask(positive_ids, anchor_ids, None, 0))  # (B,)
            per_query = (per_query + back) / 2  # (B,)
        return self._reduce(per_query, labels)

    def _all_texts(
        self,
        a: Tensor,
        p: Tensor,
        n: Tensor | None,
        anchor_ids: Tensor | None,
        positive_ids: Tensor | None,
        negative_ids: Tensor | None,
    ) -> Tensor:
        """Per-query loss ``(2B,)`` with ``candidates="all"``, from normalised ``a, p (B, H)`` and ``n (B*N, H)``."""
        batch = a.shape[0]
        texts = torch.cat([a, p] if n is None else [a, p, n])  # (T, H), T = 2B + B*N
        num_texts = texts.shape[0]
        queries = 2 * batch
        logits = texts[:queries] @ texts.T / self.temperature  # (2B, T)
        index = torch.arange(queries, device=a.device)  # (2B,)
        logits = logits.masked_fill(F.one_hot(index, num_texts).bool(), torch.finfo(logits.dtype).min)  # self out
        num_neg = (num_texts - queries) // batch
        partner = pair_partners(batch, num_neg, a.device)  # (T,)
        dup = None
        if anchor_ids is not None or positive_ids is not None:
            ids, known = batch_text_ids(anchor_ids, positive_ids, negative_ids, batch, num_neg)  # (T,) each
            dup = all_texts_duplicate_mask(ids, known, partner, queries)  # (2B, T)
        return self._per_query(logits, dup, partner[:queries])  # (2B,)

    def _reduce(self, per_query: Tensor, labels: Tensor | None) -> Tensor:
        """Mean over the queries whose label is ``≥ min_score`` (every query without ``min_score`` or labels)."""
        if self.min_score is None or labels is None:
            return per_query.mean()
        is_query = (labels >= self.min_score).to(per_query.dtype)  # (Q,)
        return (per_query * is_query).sum() / is_query.sum().clamp_min(1.0)  # 0 with a grad_fn when no row qualifies
