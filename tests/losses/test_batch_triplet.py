"""The batch triplet family on (embedding, class id) batches: naive triplet loops and sentence-transformers parity."""

import math

import pytest
import torch

from lightembed.losses import (
    BatchAllTripletLoss,
    BatchHardSoftMarginTripletLoss,
    BatchHardTripletLoss,
    BatchSemiHardTripletLoss,
)

H = 10
LABELS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])  # a P×K batch: 4 classes, 3 rows each
EMB = torch.randn(len(LABELS), H, generator=torch.Generator().manual_seed(0)) + LABELS.unsqueeze(1) * 0.3
TOL = {"rtol": 1e-5, "atol": 1e-5}
DISTANCES = ["euclidean", "cosine"]


def _d(i, j, distance):
    u, v = EMB[i], EMB[j]
    if distance == "cosine":
        return 1 - float(u @ v / (u.norm() * v.norm()))
    return float((u - v).norm())


def _margin(distance):
    return 5.0 if distance == "euclidean" else 0.5


def _pos(i):
    return [j for j in range(len(LABELS)) if j != i and LABELS[j] == LABELS[i]]


def _neg(i):
    return [k for k in range(len(LABELS)) if LABELS[k] != LABELS[i]]


@pytest.mark.parametrize("distance", DISTANCES)
def test_batch_hard_matches_loop(distance):
    m = _margin(distance)
    want = [
        max(0.0, max(_d(i, j, distance) for j in _pos(i)) - min(_d(i, k, distance) for k in _neg(i)) + m)
        for i in range(len(LABELS))
    ]
    got = BatchHardTripletLoss(m, distance)(EMB, labels=LABELS)
    assert got.item() == pytest.approx(sum(want) / len(want), rel=1e-5)


@pytest.mark.parametrize("distance", DISTANCES)
def test_batch_hard_soft_margin_matches_loop(distance):
    want = [
        math.log1p(math.exp(max(_d(i, j, distance) for j in _pos(i)) - min(_d(i, k, distance) for k in _neg(i))))
        for i in range(len(LABELS))
    ]
    got = BatchHardSoftMarginTripletLoss(distance)(EMB, labels=LABELS)
    assert got.item() == pytest.approx(sum(want) / len(want), rel=1e-5)


@pytest.mark.parametrize("distance", DISTANCES)
def test_batch_all_matches_loop(distance):
    m = _margin(distance) / 4  # a smaller margin leaves some triplets satisfied: the count in the mean matters
    terms = [
        max(0.0, _d(i, j, distance) - _d(i, k, distance) + m)
        for i in range(len(LABELS))
        for j in _pos(i)
        for k in _neg(i)
    ]
    active = [t for t in terms if t > 1e-16]
    assert 0 < len(active) < len(terms)
    got = BatchAllTripletLoss(m, distance)(EMB, labels=LABELS)
    assert got.item() == pytest.approx(sum(active) / len(active), rel=1e-5)


@pytest.mark.parametrize("distance", DISTANCES)
def test_batch_semi_hard_matches_loop(distance):
    m = _margin(distance) / 4
    terms = []
    for i in range(len(LABELS)):
        for j in _pos(i):
            d_ij = _d(i, j, distance)
            beyond = [_d(i, k, distance) for k in _neg(i) if _d(i, k, distance) > d_ij]
            n = min(beyond) if beyond else max(_d(i, k, distance) for k in _neg(i))
            terms.append(max(0.0, d_ij - n + m))
    got = BatchSemiHardTripletLoss(m, distance)(EMB, labels=LABELS)
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_gradients_are_finite_with_duplicate_rows():
    emb = EMB.clone()
    emb[1] = emb[0]  # a zero distance off the diagonal too
    emb.requires_grad_(True)
    for loss in (BatchHardTripletLoss(), BatchAllTripletLoss(), BatchSemiHardTripletLoss()):
        (grad,) = torch.autograd.grad(loss(emb, labels=LABELS), emb)
        assert torch.isfinite(grad).all()


def test_label_batches_are_checked():
    with pytest.raises(ValueError, match="BatchHardTripletLoss needs labels"):
        BatchHardTripletLoss()(EMB)
    with pytest.raises(ValueError, match="takes \\(text, label\\) batches"):
        BatchAllTripletLoss()(EMB, EMB, labels=LABELS)
    with pytest.raises(ValueError, match="integer class ids"):
        BatchSemiHardTripletLoss()(EMB, labels=LABELS + 0.5)


def test_one_class_batch_gives_zero_with_a_graph():
    emb = EMB[:3].clone().requires_grad_(True)
    loss = BatchHardTripletLoss()(emb, labels=LABELS[:3])
    assert loss.item() == 0.0 and loss.requires_grad


@pytest.mark.parametrize("distance", DISTANCES)
def test_matches_sentence_transformers(distance):
    st = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    fn = st.BatchHardTripletLossDistanceFunction
    metric = fn.cosine_distance if distance == "cosine" else fn.euclidean_distance
    m = _margin(distance) / 4
    pairs = [
        (BatchHardTripletLoss(m, distance), st.BatchHardTripletLoss(None, distance_metric=metric, margin=m)),
        (BatchAllTripletLoss(m, distance), st.BatchAllTripletLoss(None, distance_metric=metric, margin=m)),
        (BatchSemiHardTripletLoss(m, distance), st.BatchSemiHardTripletLoss(None, distance_metric=metric, margin=m)),
        (BatchHardSoftMarginTripletLoss(distance), st.BatchHardSoftMarginTripletLoss(None, distance_metric=metric)),
    ]
    for ours, theirs in pairs:
        mine, their_emb = EMB.clone().requires_grad_(True), EMB.clone().requires_grad_(True)
        got, want = ours(mine, labels=LABELS), theirs.compute_loss_from_embeddings([their_emb], LABELS)
        torch.testing.assert_close(got, want, **TOL, msg=type(ours).__name__)
        got.backward()
        want.backward()
        torch.testing.assert_close(mine.grad, their_emb.grad, **TOL, msg=f"{type(ours).__name__} gradient")


def test_accept_the_text_ids_a_stage_passes_every_loss():
    ids = {"anchor_ids": torch.arange(len(LABELS)), "positive_ids": None, "negative_ids": None}
    for loss in (
        BatchHardTripletLoss(),
        BatchAllTripletLoss(),
        BatchSemiHardTripletLoss(),
        BatchHardSoftMarginTripletLoss(),
    ):
        torch.testing.assert_close(loss(EMB, labels=LABELS, **ids), loss(EMB, labels=LABELS))
