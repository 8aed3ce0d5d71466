"""Pooling: turn token states ``hidden (B, L, H)`` into one embedding per text ``(B, H)``.

Every function here is pure and vectorised, takes ``hidden: (B, L, H)`` and ``attention_mask: (B, L)`` (1 = real
token, 0 = padding, any integer or bool dtype) and returns ``(B, H)`` in ``hidden``'s dtype. They are correct under
both LEFT padding (decoder LLMs: ``[pad pad x1 x2 x3]``) and RIGHT padding (encoders: ``[x1 x2 x3 pad pad]``): nothing
assumes that position 0 or position ``L - 1`` is a real token.

Strategies (names in :data:`POOLING_STRATEGIES`):

- ``cls``: the first real token of each row (BERT's ``[CLS]``; Devlin et al. 2019).
- ``mean``: the average of the pooled tokens (Sentence-BERT; Reimers & Gurevych 2019).
- ``max``: the element-wise maximum of the pooled tokens; excluded positions are filled with the dtype's minimum, so
  they never win.
- ``last_token``: the last real token of each row (the EOS state of a causal LM; SGPT / E5-Mistral).
- ``weighted_mean``: position-weighted mean with weights ``1..n`` over the pooled tokens (SGPT; Muennighoff 2022).

Instruction-aware pooling (INSTRUCTOR, LLM2Vec) excludes an instruction prefix from the pooled tokens: build a
``pool_mask`` with :func:`prefix_mask` and pass it to :func:`pool`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "MASKABLE_STRATEGIES",
    "POOLING_STRATEGIES",
    "cls_pool",
    "last_token_pool",
    "max_pool",
    "mean_pool",
    "pool",
    "prefix_mask",
    "weighted_mean_pool",
]


def _check_inputs(hidden: Tensor, mask: Tensor, mask_name: str = "attention_mask") -> Tensor:
    """Validate shapes, return ``mask`` as bool ``(B, L)``, and refuse rows with no token to pool."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden must have shape (B, L, H), got {tuple(hidden.shape)}")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"{mask_name} must have shape (B, L) = {tuple(hidden.shape[:2])} to match hidden, got {tuple(mask.shape)}"
        )
    mask = mask.bool()  # (B, L)
    empty = ~mask.any(dim=1)  # (B,)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(
            f"{mask_name} has no token to pool in row(s) {rows}; every row needs at least one position set to 1 "
            "(an instruction prefix as long as the whole text leaves nothing to pool)"
        )
    return mask


def _gather_positions(hidden: Tensor, positions: Tensor) -> Tensor:
    """Pick ``hidden[b, positions[b]]`` for every row ``b``; ``positions`` is ``(B,)``."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)  # (B,)
    return hidden[rows, positions]  # (B, H)


def _weight_dtype(hidden: Tensor) -> torch.dtype:
    """At least float32 for computing pooling weights (bf16 cannot even count past 256 exactly)."""
    return torch.promote_types(hidden.dtype, torch.float32)


def _weighted_sum(hidden: Tensor, weights: Tensor) -> Tensor:
    """``Σ_l weights[b, l] · hidden[b, l]`` as one batched matmul in ``hidden``'s dtype; ``weights`` is ``(B, L)``."""
    return torch.bmm(weights.to(hidden.dtype).unsqueeze(1), hidden).squeeze(1)  # (B, 1, L) @ (B, L, H) -> (B, H)


def cls_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """First real token of each row: ``e_b = hidden[b, min{l : mask[b, l] = 1}]``.

    With left padding the first real token is not at position 0, so the position is found from the mask.

    Args:
        hidden: token states ``(B, L, H)``.
        attention_mask: ``(B, L)``, 1 for real tokens.

    Returns:
        ``(B, H)`` in ``hidden``'s dtype.
    """
    mask = _check_inputs(hidden, attention_mask)
    first = mask.int().argmax(dim=1)  # (B,) argmax returns the first maximal index
    return _gather_positions(hidden, first)  # (B, H)


def last_token_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Last real token of each row: ``e_b = hidden[b, max{l : mask[b, l] = 1}]``.

    With right padding the last real token is not at position ``L - 1``, so the position is found from the mask.

    Args:
        hidden: token states ``(B, L, H)``.
        attention_mask: ``(B, L)``, 1 for real tokens.

    Returns:
        ``(B, H)`` in ``hidden``'s dtype.
    """
    mask = _check_inputs(hidden, attention_mask)
    positions = torch.arange(mask.shape[1], device=mask.device)  # (L,)
    last = (positions * mask).argmax(dim=1)  # (B,) largest position holding a real token
    return _gather_positions(hidden, last)  # (B, H)


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average of the pooled tokens: ``e_b = Σ_l m_bl · h_bl / Σ_l m_bl`` (per row, never over the whole batch).

    Args:
        hidden: token states ``(B, L, H)``.
        attention_mask: ``(B, L)``, 1 for tokens to pool.

    Returns:
        ``(B, H)`` in ``hidden``'s dtype.
    """
    mask = _check_inputs(hidden, attention_mask)
    weights = mask.to(_weight_dtype(hidden))  # (B, L)
    weights = weights / weights.sum(dim=1, keepdim=True)  # (B, L) each row sums to 1
    return _weighted_sum(hidden, weights)  # (B, H)


def max_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Element-wise maximum over the pooled tokens: ``e_bk = max_{l : m_bl = 1} h_blk``.

    Excluded positions are filled with ``torch.finfo(hidden.dtype).min`` (not 0), so padding never wins even when
    every real value is negative.

    Args:
        hidden: token states ``(B, L, H)``.
        attention_mask: ``(B, L)``, 1 for tokens to pool.

    Returns:
        ``(B, H)`` in ``hidden``'s dtype.
    """
    mask = _check_inputs(hidden, attention_mask)
    filled = hidden.masked_fill(~mask.unsqueeze(-1), torch.finfo(hidden.dtype).min)  # (B, L, H)
    return filled.amax(dim=1)  # (B, H)


def weighted_mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Position-weighted mean (SGPT, Muennighoff 2022, arXiv 2202.08904).

    The ``k``-th pooled token of a row (``k = 1..n_b``, counting only positions with ``m_bl = 1``) gets weight ``k``:
    ``e_b = Σ_k k · h_bk / Σ_k k``. Later tokens, which have attended to more of the text in a causal LM, weigh more.
    Counting pooled tokens (not absolute positions) makes the weights independent of the padding side, and with an
    instruction excluded by ``pool_mask`` the weights restart at 1 on the first text token.

    Args:
        hidden: token states ``(B, L, H)``.
        attention_mask: ``(B, L)``, 1 for tokens to pool.

    Returns:
        ``(B, H)`` in ``hidden``'s dtype.
    """
    mask = _check_inputs(hidden, attention_mask)
    weights = mask.to(_weight_dtype(hidden)).cumsum(dim=1) * mask  # (B, L) 1..n_b on pooled positions, 0 elsewhere
    weights = weights / weights.sum(dim=1, keepdim=True)  # (B, L) each row sums to 1
    return _weighted_sum(hidden, weights)  # (B, H)


POOLING_STRATEGIES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cls": cls_pool,
    "mean": mean_pool,
    "max": max_pool,
    "last_token": last_token_pool,
    "weighted_mean": weighted_mean_pool,
}
"""Strategy name -> pooling function ``(hidden (B, L, H), mask (B, L)) -> (B, H)``."""

MASKABLE_STRATEGIES: frozenset[str] = frozenset({"mean", "max", "weighted_mean"})
"""Strategies that pool over a set of tokens and therefore honour ``pool_mask``; ``cls`` and ``last_token`` pick one
position and always use ``attention_mask``."""


def pool(hidden: Tensor, attention_mask: Tensor, strategy: str, pool_mask: Tensor | None = None) -> Tensor:
    """Pool ``hidden`` with the strategy named ``strategy`` (a key of :data:`POOLING_STRATEGIES`).

    Args:
        hidden: token states ``(B, L, H)``.
        attention_mask: ``(B, L)``, 1 for real tokens.
        strategy: one of ``cls``, ``mean``, ``max``, ``last_token``, ``weighted_mean``.
        pool_mask: optional ``(B, L)``, the attention mask with instruction/prefix tokens set to 0 (see
            :func:`prefix_mask`). It selects the pooled tokens for ``mean``, ``max`` and ``weighted_mean`` (a position
            is pooled only where both masks are 1, so padding can never re-enter). ``cls`` and ``last_token`` ignore
            it and always use ``attention_mask``: the first/last real token is where the model summarises the text.

    Returns:
        ``(B, H)`` in ``hidden``'s dtype.

    Raises:
        ValueError: for an unknown ``strategy``, mismatched shapes, or a row with no token left to pool.
    """
    if strategy not in POOLING_STRATEGIES:
        raise ValueError(f"unknown pooling strategy={strategy!r}; valid strategies: {', '.join(POOLING_STRATEGIES)}")
    fn = POOLING_STRATEGIES[strategy]
    if pool_mask is None or strategy not in MASKABLE_STRATEGIES:
        return fn(hidden, attention_mask)  # (B, H)
    if pool_mask.shape != attention_mask.shape:
        raise ValueError(
            f"pool_mask must have the shape of attention_mask {tuple(attention_mask.shape)}, "
            f"got {tuple(pool_mask.shape)}"
        )
    return fn(hidden, pool_mask.bool() & attention_mask.bool())  # (B, H)


def prefix_mask(attention_mask: Tensor, prefix_lengths: Tensor) -> Tensor:
    """Zero the first ``prefix_lengths[b]`` REAL tokens of each row: the pool mask that excludes an instruction.

    ``out[b, l] = mask[b, l] · [rank_bl > prefix_lengths[b]]`` with ``rank_bl = Σ_{l' ≤ l} mask[b, l']`` the 1-based
    index of a real token among the real tokens of its row, so left padding (real tokens that start late) is handled.
    A prefix as long as the row leaves it empty; :func:`pool` then raises rather than returning NaN.

    Args:
        attention_mask: ``(B, L)``, 1 for real tokens.
        prefix_lengths: ``(B,)`` integer number of leading real tokens to exclude (instruction length, with any BOS
            token the tokenizer adds in front of it).

    Returns:
        ``(B, L)`` in ``attention_mask``'s dtype.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must have shape (B, L), got {tuple(attention_mask.shape)}")
    if prefix_lengths.shape != attention_mask.shape[:1]:
        raise ValueError(
            f"prefix_lengths must have shape (B,) = ({attention_mask.shape[0]},), got {tuple(prefix_lengths.shape)}"
        )
    if prefix_lengths.is_floating_point() or prefix_lengths.is_complex():
        raise ValueError(f"prefix_lengths must be an integer tensor, got {prefix_lengths.dtype}")
    if bool((prefix_lengths < 0).any()):
        raise ValueError(f"prefix_lengths must be >= 0, got {prefix_lengths.tolist()}")
    mask = attention_mask.bool()  # (B, L)
    rank = mask.long().cumsum(dim=1)  # (B, L) 1-based index among real tokens
    keep = mask & (rank > prefix_lengths.to(rank.device).unsqueeze(1))  # (B, L)
    return keep.to(attention_mask.dtype)  # (B, L)
