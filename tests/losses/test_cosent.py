"""CoSENTLoss against a naive double loop over pairs."""

from __future__ import annotations

import math

import pytest
import torch

from lightembed.losses import CoSENTLoss


def naive_cos(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().tolist(), y.double().tolist()
    dot = sum(a * b for a, b in zip(x, y, strict=True))
    return dot / (math.sqrt(sum(a * a for a in x)) * math.sqrt(sum(b * b for b in y)))


def naive_cosent(lefts, rights, labels, tau: float) -> float:
    scores = [naive_cos(x, y) for x, y in zip(lefts, rights, strict=True)]
    total = 1.0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if labels[i] > labels[j]:
                total += math.exp((scores[j] - scores[i]) / tau)
    return math.log(total)


def test_matches_naive_loop_with_labels():
    torch.manual_seed(0)
    anchor, positive = torch.randn(7, 8), torch.randn(7, 8)
    labels = torch.tensor([0.0, 2.5, 5.0, 2.5, 1.0, 4.0, 0.0])  # includes ties
    got = CoSENTLoss(temperature=0.05)(anchor, positive, labels=labels)
    assert got.dim() == 0
    assert got.item() == pytest.approx(naive_cosent(anchor, positive, labels.tolist(), 0.05), rel=1e-5)


@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_triplets_become_scored_pairs(tau):
    torch.manual_seed(1)
    anchor, positive, negative = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    lefts = list(anchor) + list(anchor)
    rights = list(positive) + list(negative)
    labels = [1] * 4 + [0] * 4
    got = CoSENTLoss(temperature=tau)(anchor, positive, negative)
    assert got.item() == pytest.approx(naive_cosent(lefts, rights, labels, tau), rel=1e-5)


def test_triplets_with_several_negatives():
    torch.manual_seed(2)
    anchor, positive, negative = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 2, 6)
    lefts, rights, labels = list(anchor), list(positive), [1] * 3
    for b in range(3):
        for n in range(2):
            lefts.append(anchor[b])
            rights.append(negative[b, n])
            labels.append(0)
    got = CoSENTLoss()(anchor, positive, negative)
    assert got.item() == pytest.approx(naive_cosent(lefts, rights, labels, 0.05), rel=1e-5)


def test_equal_labels_give_zero_with_grad():
    anchor = torch.randn(3, 4, requires_grad=True)
    got = CoSENTLoss()(anchor, torch.randn(3, 4), labels=torch.ones(3))
    assert got.item() == 0.0
    got.backward()
    assert torch.isfinite(anchor.grad).all()


def test_grad_finite_when_anchor_equals_positive():
    torch.manual_seed(3)
    anchor = torch.randn(5, 8, requires_grad=True)
    positive = (anchor.detach() + 1e-6 * torch.randn(5, 8)).requires_grad_()
    negative = torch.randn(5, 8, requires_grad=True)
    loss = CoSENTLoss()(anchor, positive, negative)
    loss.backward()
    for t in (anchor, positive, negative):
        assert torch.isfinite(t.grad).all()
    anchor.grad = None
    CoSENTLoss()(anchor, positive, labels=torch.arange(5.0)).backward()
    assert torch.isfinite(anchor.grad).all()


def test_bf16_inputs():
    torch.manual_seed(4)
    anchor, positive = torch.randn(4, 8), torch.randn(4, 8)
    labels = torch.tensor([0.0, 1.0, 2.0, 3.0])
    got = CoSENTLoss()(anchor.bfloat16(), positive.bfloat16(), labels=labels)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(CoSENTLoss()(anchor, positive, labels=labels).item(), rel=5e-2)


def test_errors():
    anchor, positive = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="labels"):
        CoSENTLoss()(anchor, positive)
    with pytest.raises(ValueError, match="not both"):
        CoSENTLoss()(anchor, positive, torch.randn(3, 4), torch.ones(3))
    with pytest.raises(ValueError, match="labels must have shape"):
        CoSENTLoss()(anchor, positive, labels=torch.ones(4))
    with pytest.raises(ValueError, match="positive must have"):
        CoSENTLoss()(anchor, torch.randn(3, 5), labels=torch.ones(3))
    for tau in (0.0, -0.1):
        with pytest.raises(ValueError, match="temperature"):
            CoSENTLoss(temperature=tau)
