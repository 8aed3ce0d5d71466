"""AngleDifferenceLoss and angle_scores against torch.complex and a naive double loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightembed.losses import AngleDifferenceLoss
from lightembed.losses.angle_difference import angle_scores


def complex_score(x: torch.Tensor, y: torch.Tensor) -> float:
    """The angle score of one pair with torch.complex: |Re z + Im z|, z = Σ u conj(v) / (‖u‖ ‖v‖)."""
    half = x.shape[0] // 2
    u = torch.complex(x[:half].double(), x[half:].double())
    v = torch.complex(y[:half].double(), y[half:].double())
    z = (u * v.conj()).sum() / (u.abs().pow(2).sum().sqrt() * v.abs().pow(2).sum().sqrt())
    return abs(z.real.item() + z.imag.item())


def naive_angle_loss(lefts, rights, labels, tau: float) -> float:
    scores = [complex_score(x, y) for x, y in zip(lefts, rights, strict=True)]
    total = 1.0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if labels[i] > labels[j]:
                total += math.exp((scores[j] - scores[i]) / tau)
    return math.log(total)


def test_scores_match_complex_computation():
    torch.manual_seed(0)
    left, right = torch.randn(9, 10), torch.randn(9, 10)
    got = angle_scores(left, right)
    assert got.shape == (9,)
    expected = torch.tensor([complex_score(x, y) for x, y in zip(left, right, strict=True)], dtype=torch.float64)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_real_part_is_cosine():
    torch.manual_seed(1)
    left, right = torch.randn(5, 8), torch.randn(5, 8)
    a, b = left.chunk(2, dim=-1)
    c, d = right.chunk(2, dim=-1)
    real = (a * c + b * d).sum(-1) / (left.norm(dim=-1) * right.norm(dim=-1))
    torch.testing.assert_close(real, F.cosine_similarity(left, right, dim=-1))


@pytest.mark.parametrize("tau", [1.0, 0.05])
def test_matches_naive_loop_with_labels(tau):
    torch.manual_seed(2)
    anchor, positive = torch.randn(6, 8), torch.randn(6, 8)
    labels = torch.tensor([3.0, 1.0, 1.0, 0.0, 5.0, 2.0])
    got = AngleDifferenceLoss(temperature=tau)(anchor, positive, labels=labels)
    assert got.dim() == 0
    assert got.item() == pytest.approx(naive_angle_loss(anchor, positive, labels.tolist(), tau), rel=1e-5)


def test_triplets_become_scored_pairs():
    torch.manual_seed(3)
    anchor, positive, negative = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 2, 6)
    lefts, rights, labels = list(anchor), list(positive), [1] * 4
    for b in range(4):
        for n in range(2):
            lefts.append(anchor[b])
            rights.append(negative[b, n])
            labels.append(0)
    got = AngleDifferenceLoss()(anchor, positive, negative)
    assert got.item() == pytest.approx(naive_angle_loss(lefts, rights, labels, 1.0), rel=1e-5)
    # (B, H) negatives are N = 1
    got_one = AngleDifferenceLoss()(anchor, positive, negative[:, 0])
    assert got_one.item() == pytest.approx(AngleDifferenceLoss()(anchor, positive, negative[:, :1]).item())


def test_grad_finite_when_anchor_equals_positive():
    torch.manual_seed(4)
    anchor = torch.randn(5, 8, requires_grad=True)
    positive = (anchor.detach() + 1e-6 * torch.randn(5, 8)).requires_grad_()
    AngleDifferenceLoss()(anchor, positive, labels=torch.arange(5.0)).backward()
    assert torch.isfinite(anchor.grad).all()
    assert torch.isfinite(positive.grad).all()
    anchor.grad = None
    AngleDifferenceLoss()(anchor, positive, torch.randn(5, 8)).backward()
    assert torch.isfinite(anchor.grad).all()


def test_errors():
    with pytest.raises(ValueError, match="even"):
        AngleDifferenceLoss()(torch.randn(3, 5), torch.randn(3, 5), labels=torch.ones(3))
    with pytest.raises(ValueError, match="labels"):
        AngleDifferenceLoss()(torch.randn(3, 4), torch.randn(3, 4))
    for tau in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            AngleDifferenceLoss(temperature=tau)
