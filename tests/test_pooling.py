"""Pooling functions against naive per-row loops, under left and right padding."""

from __future__ import annotations

import pytest
import torch

from lightembed.pooling import (
    POOLING_STRATEGIES,
    cls_pool,
    last_token_pool,
    max_pool,
    mean_pool,
    pool,
    prefix_mask,
    weighted_mean_pool,
)

LENGTHS = [5, 1, 7, 3]
MAX_LEN = 8
HIDDEN = 6


def make_mask(lengths: list[int], max_len: int, side: str) -> torch.Tensor:
    mask = torch.zeros(len(lengths), max_len, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "right":
            mask[b, :n] = 1
        else:
            mask[b, max_len - n :] = 1
    return mask


def naive_pool(hidden: torch.Tensor, mask: torch.Tensor, strategy: str) -> torch.Tensor:
    """One row at a time, one token at a time."""
    out = []
    for b in range(hidden.shape[0]):
        positions = [pos for pos in range(hidden.shape[1]) if mask[b, pos] == 1]
        tokens = [hidden[b, pos].double() for pos in positions]
        if strategy == "cls":
            out.append(tokens[0])
        elif strategy == "last_token":
            out.append(tokens[-1])
        elif strategy == "mean":
            total = torch.zeros(hidden.shape[2], dtype=torch.float64)
            for tok in tokens:
                total = total + tok
            out.append(total / len(tokens))
        elif strategy == "max":
            best = tokens[0].clone()
            for tok in tokens[1:]:
                for k in range(len(best)):
                    best[k] = max(best[k], tok[k])
            out.append(best)
        elif strategy == "weighted_mean":
            total = torch.zeros(hidden.shape[2], dtype=torch.float64)
            weight_sum = 0
            for k, tok in enumerate(tokens, start=1):
                total = total + k * tok
                weight_sum += k
            out.append(total / weight_sum)
    return torch.stack(out)


def naive_prefix_mask(mask: torch.Tensor, prefix_lengths: list[int]) -> torch.Tensor:
    out = mask.clone()
    for b in range(mask.shape[0]):
        seen = 0
        for pos in range(mask.shape[1]):
            if mask[b, pos] == 1:
                seen += 1
                if seen <= prefix_lengths[b]:
                    out[b, pos] = 0
    return out


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("strategy", sorted(POOLING_STRATEGIES))
def test_pool_matches_naive_loop(strategy, side):
    torch.manual_seed(0)
    hidden = torch.randn(len(LENGTHS), MAX_LEN, HIDDEN)
    mask = make_mask(LENGTHS, MAX_LEN, side)
    got = pool(hidden, mask, strategy)
    assert got.shape == (len(LENGTHS), HIDDEN)
    assert got.dtype == hidden.dtype
    torch.testing.assert_close(got.double(), naive_pool(hidden, mask, strategy), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "fn, strategy",
    [
        (cls_pool, "cls"),
        (mean_pool, "mean"),
        (max_pool, "max"),
        (last_token_pool, "last_token"),
        (weighted_mean_pool, "weighted_mean"),
    ],
)
def test_registry_points_at_functions(fn, strategy):
    assert POOLING_STRATEGIES[strategy] is fn


@pytest.mark.parametrize("strategy", sorted(POOLING_STRATEGIES))
def test_padding_side_does_not_change_result(strategy):
    torch.manual_seed(1)
    real = [torch.randn(n, HIDDEN) for n in LENGTHS]
    right = torch.full((len(LENGTHS), MAX_LEN, HIDDEN), 99.0)
    left = torch.full((len(LENGTHS), MAX_LEN, HIDDEN), 99.0)
    for b, tokens in enumerate(real):
        right[b, : len(tokens)] = tokens
        left[b, MAX_LEN - len(tokens) :] = tokens
    got_right = pool(right, make_mask(LENGTHS, MAX_LEN, "right"), strategy)
    got_left = pool(left, make_mask(LENGTHS, MAX_LEN, "left"), strategy)
    torch.testing.assert_close(got_left, got_right)


def test_cls_and_last_token_with_left_padding_are_not_fixed_positions():
    hidden = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)  # value = 4 * b + pos
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    assert cls_pool(hidden, mask).flatten().tolist() == [2.0, 4.0]
    assert last_token_pool(hidden, mask).flatten().tolist() == [3.0, 6.0]


@pytest.mark.parametrize("side", ["left", "right"])
def test_max_pool_padding_never_wins(side):
    hidden = -1.0 - torch.rand(len(LENGTHS), MAX_LEN, HIDDEN)  # every real value < 0; padding is 0 in hidden
    mask = make_mask(LENGTHS, MAX_LEN, side)
    hidden = hidden * mask.unsqueeze(-1)  # padding positions hold exactly 0
    got = max_pool(hidden, mask)
    assert (got < 0).all()
    torch.testing.assert_close(got.double(), naive_pool(hidden, mask, "max"))


@pytest.mark.parametrize("side", ["left", "right"])
def test_prefix_mask_matches_naive_loop(side):
    mask = make_mask(LENGTHS, MAX_LEN, side)
    prefix = [2, 0, 3, 1]
    got = prefix_mask(mask, torch.tensor(prefix))
    assert got.dtype == mask.dtype
    assert torch.equal(got, naive_prefix_mask(mask, prefix))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("strategy", sorted(POOLING_STRATEGIES))
def test_pool_mask_excludes_instruction(strategy, side):
    torch.manual_seed(2)
    lengths = [5, 4, 7, 3]
    hidden = torch.randn(len(lengths), MAX_LEN, HIDDEN)
    mask = make_mask(lengths, MAX_LEN, side)
    prefix = [2, 1, 3, 1]
    pmask = prefix_mask(mask, torch.tensor(prefix))
    got = pool(hidden, mask, strategy, pool_mask=pmask)
    # cls / last_token always use the attention mask; the others pool only the non-instruction tokens
    expected_mask = mask if strategy in ("cls", "last_token") else naive_prefix_mask(mask, prefix)
    torch.testing.assert_close(got.double(), naive_pool(hidden, expected_mask, strategy), rtol=1e-5, atol=1e-6)


def test_pool_mask_never_readmits_padding():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    all_ones = torch.ones_like(mask)
    torch.testing.assert_close(pool(hidden, mask, "mean", pool_mask=all_ones), mean_pool(hidden, mask))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("strategy", sorted(POOLING_STRATEGIES))
def test_bf16(strategy, side):
    torch.manual_seed(3)
    hidden = torch.randn(len(LENGTHS), MAX_LEN, HIDDEN).to(torch.bfloat16)
    mask = make_mask(LENGTHS, MAX_LEN, side)
    got = pool(hidden, mask, strategy)
    assert got.dtype == torch.bfloat16
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), naive_pool(hidden, mask, strategy), rtol=2e-2, atol=2e-2)


def test_bool_mask_accepted():
    hidden = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(pool(hidden, mask.bool(), "mean"), pool(hidden, mask, "mean"))


def test_gradient_flows_only_to_pooled_tokens():
    hidden = torch.randn(2, 4, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]])
    pool(hidden, mask, "weighted_mean").sum().backward()
    assert (hidden.grad[mask == 0] == 0).all()
    assert (hidden.grad[mask == 1] != 0).all()


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError, match="strategy") as err:
        pool(torch.randn(1, 2, 3), torch.ones(1, 2), "median")
    for name in POOLING_STRATEGIES:
        assert name in str(err.value)


@pytest.mark.parametrize("strategy", ["mean", "max", "weighted_mean"])
def test_empty_pool_mask_row_raises(strategy):
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    pmask = prefix_mask(mask, torch.tensor([1, 2]))  # row 1 loses all of its real tokens
    with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
        pool(torch.randn(2, 3, 4), mask, strategy, pool_mask=pmask)


@pytest.mark.parametrize("strategy", sorted(POOLING_STRATEGIES))
def test_empty_attention_mask_row_raises(strategy):
    with pytest.raises(ValueError, match="no token to pool"):
        pool(torch.randn(2, 3, 4), torch.tensor([[1, 0, 0], [0, 0, 0]]), strategy)


def test_shape_errors():
    with pytest.raises(ValueError, match="attention_mask"):
        pool(torch.randn(2, 3, 4), torch.ones(2, 4), "mean")
    with pytest.raises(ValueError, match=r"\(B, L, H\)"):
        pool(torch.randn(2, 3), torch.ones(2, 3), "mean")
    with pytest.raises(ValueError, match="pool_mask"):
        pool(torch.randn(2, 3, 4), torch.ones(2, 3), "mean", pool_mask=torch.ones(2, 2))
    with pytest.raises(ValueError, match="prefix_lengths"):
        prefix_mask(torch.ones(2, 3), torch.tensor([1]))
    with pytest.raises(ValueError, match="prefix_lengths"):
        prefix_mask(torch.ones(2, 3), torch.tensor([1, -1]))
    with pytest.raises(ValueError, match="prefix_lengths"):
        prefix_mask(torch.ones(2, 3), torch.tensor([1.0, 1.0]))
