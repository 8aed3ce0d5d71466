"""AnglEObjectiveLoss: the weighted sum of its three terms, checked against naive loops."""

from __future__ import annotations

import math

import pytest
import torch

from lightembed.losses import AngleDifferenceLoss, AnglEObjectiveLoss, CoSENTLoss, InBatchNegativesLoss


def naive_cos(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().tolist(), y.double().tolist()
    dot = sum(a * b for a, b in zip(x, y, strict=True))
    return dot / (math.sqrt(sum(a * a for a in x)) * math.sqrt(sum(b * b for b in y)))


def naive_angle(x: torch.Tensor, y: torch.Tensor) -> float:
    half = len(x) // 2
    a, b, c, d = x[:half].tolist(), x[half:].tolist(), y[:half].tolist(), y[half:].tolist()
    norm = math.sqrt(sum(v * v for v in a + b)) * math.sqrt(sum(v * v for v in c + d))
    real = sum(a[k] * c[k] + b[k] * d[k] for k in range(half)) / norm
    imag = sum(b[k] * c[k] - a[k] * d[k] for k in range(half)) / norm
    return abs(real + imag)


def naive_rank(scores, labels, tau):
    total = 1.0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if labels[i] > labels[j]:
                total += math.exp((scores[j] - scores[i]) / tau)
    return math.log(total)


def naive_info_nce(anchor, positive, tau):
    losses = []
    for i in range(len(anchor)):
        logits = [naive_cos(anchor[i], positive[j]) / tau for j in range(len(positive))]
        losses.append(-logits[i] + math.log(sum(math.exp(v) for v in logits)))
    return sum(losses) / len(losses)


def test_matches_naive_weighted_sum_with_labels():
    torch.manual_seed(0)
    anchor, positive = torch.randn(6, 8), torch.randn(6, 8)
    labels = [0.0, 3.0, 1.0, 5.0, 2.0, 4.0]
    loss = AnglEObjectiveLoss(cosine_weight=1.0, ibn_weight=0.5, angle_weight=2.0)
    got = loss(anchor, positive, labels=torch.tensor(labels))
    cos = naive_rank([naive_cos(a, p) for a, p in zip(anchor, positive, strict=True)], labels, 0.05)
    ibn = naive_info_nce(anchor, positive, 0.05)
    ang = naive_rank([naive_angle(a, p) for a, p in zip(anchor, positive, strict=True)], labels, 1.0)
    assert got.item() == pytest.approx(cos + 0.5 * ibn + 2.0 * ang, rel=1e-5)


def test_triplets_and_ids_are_forwarded():
    torch.manual_seed(1)
    anchor, positive, negative = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    ids = {"anchor_ids": torch.tensor([0, 1, 0, 2]), "positive_ids": torch.tensor([5, 6, 7, 5])}
    got = AnglEObjectiveLoss(duplicates="ignore", cosine_temperature=0.1, ibn_temperature=0.2, angle_temperature=0.5)(
        anchor, positive, negative, **ids
    )
    expected = (
        CoSENTLoss(0.1)(anchor, positive, negative)
        + InBatchNegativesLoss(0.2, duplicates="ignore")(anchor, positive, negative, **ids)
        + AngleDifferenceLoss(0.5)(anchor, positive, negative)
    )
    torch.testing.assert_close(got, expected)
    assert (
        abs(
            got.item()
            - AnglEObjectiveLoss(
                duplicates="ignore", cosine_temperature=0.1, ibn_temperature=0.2, angle_temperature=0.5
            )(anchor, positive, negative).item()
        )
        > 1e-4
    )


def test_zero_weight_skips_term_and_its_label_requirement():
    torch.manual_seed(2)
    anchor, positive = torch.randn(5, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match="labels"):
        AnglEObjectiveLoss()(anchor, positive)
    got = AnglEObjectiveLoss(cosine_weight=0.0, angle_weight=0.0)(anchor, positive)
    assert got.item() == pytest.approx(naive_info_nce(anchor, positive, 0.05), rel=1e-5)
    loss = AnglEObjectiveLoss(ibn_weight=0.0)
    assert loss.in_batch is None
    labels = torch.arange(5.0)
    expected = CoSENTLoss()(anchor, positive, labels=labels) + AngleDifferenceLoss()(anchor, positive, labels=labels)
    torch.testing.assert_close(loss(anchor, positive, labels=labels), expected)


def test_ibn_min_score_is_forwarded():
    torch.manual_seed(3)
    anchor, positive = torch.randn(6, 8), torch.randn(6, 8)
    labels = torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0, 2.0])
    got = AnglEObjectiveLoss(cosine_weight=0.0, angle_weight=0.0, ibn_min_score=3.0)(anchor, positive, labels=labels)
    torch.testing.assert_close(got, InBatchNegativesLoss(min_score=3.0)(anchor, positive, labels=labels))


def test_ibn_candidates_all_is_forwarded():
    torch.manual_seed(6)
    anchor, positive = torch.randn(6, 8), torch.randn(6, 8)
    ids = {"anchor_ids": torch.tensor([0, 1, 0, 2, 3, 4]), "positive_ids": torch.tensor([5, 6, 7, 5, 1, 8])}
    got = AnglEObjectiveLoss(cosine_weight=0.0, angle_weight=0.0, ibn_candidates="all")(anchor, positive, **ids)
    torch.testing.assert_close(got, InBatchNegativesLoss(candidates="all")(anchor, positive, **ids))
    assert AnglEObjectiveLoss().in_batch.candidates == "positives"


def test_ibn_symmetric_averages_both_directions():
    torch.manual_seed(5)
    anchor, positive = torch.randn(5, 8), torch.randn(5, 8)
    got = AnglEObjectiveLoss(cosine_weight=0.0, angle_weight=0.0, ibn_symmetric=True)(anchor, positive)
    forward, backward = naive_info_nce(anchor, positive, 0.05), naive_info_nce(positive, anchor, 0.05)
    assert got.item() == pytest.approx((forward + backward) / 2, rel=1e-5)
    assert abs(forward - backward) > 1e-3  # the two directions differ, so the test tells them apart


def test_grad_finite_when_anchor_equals_positive():
    torch.manual_seed(4)
    anchor = torch.randn(5, 8, requires_grad=True)
    positive = (anchor.detach() + 1e-6 * torch.randn(5, 8)).requires_grad_()
    AnglEObjectiveLoss()(anchor, positive, labels=torch.arange(5.0)).backward()
    assert torch.isfinite(anchor.grad).all()
    assert torch.isfinite(positive.grad).all()


def test_defaults_follow_the_paper():
    loss = AnglEObjectiveLoss()
    assert loss.cosine.temperature == 0.05
    assert loss.in_batch.temperature == 0.05
    assert loss.angle.temperature == 1.0


def test_constructor_errors():
    with pytest.raises(ValueError, match="cosine_weight"):
        AnglEObjectiveLoss(cosine_weight=-1.0)
    with pytest.raises(ValueError, match="angle_weight"):
        AnglEObjectiveLoss(angle_weight=-0.1)
    with pytest.raises(ValueError, match="all are 0"):
        AnglEObjectiveLoss(cosine_weight=0.0, ibn_weight=0.0, angle_weight=0.0)
    with pytest.raises(ValueError, match="ibn_temperature"):
        AnglEObjectiveLoss(ibn_temperature=0.0)
    with pytest.raises(ValueError, match="angle_temperature"):
        AnglEObjectiveLoss(angle_temperature=-1.0)
    with pytest.raises(ValueError, match="cosine_temperature"):
        AnglEObjectiveLoss(cosine_temperature=0.0)
    with pytest.raises(ValueError, match="duplicates"):
        AnglEObjectiveLoss(duplicates="drop")
