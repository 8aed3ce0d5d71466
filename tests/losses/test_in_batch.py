"""InBatchNegativesLoss against a naive per-query loop, with hard negatives, duplicate texts and min_score."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightembed.losses import InBatchNegativesLoss


def naive_cos(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().tolist(), y.double().tolist()
    dot = sum(a * b for a, b in zip(x, y, strict=True))
    return dot / (math.sqrt(sum(a * a for a in x)) * math.sqrt(sum(b * b for b in y)))


def naive_query_loss(query, candidates, tau, duplicates):
    """−log(Σ positives / Σ candidates) of one query; ``candidates`` = [(vector, own positive?, duplicate?)]."""
    numerator, denominator = 0.0, 0.0
    for vector, own, duplicate in candidates:
        logit = naive_cos(query, vector) / tau
        if own or (duplicate and duplicates == "positive"):
            numerator += math.exp(logit)
        if own or not duplicate or duplicates == "positive":
            denominator += math.exp(logit)
    return -math.log(numerator / denominator)


def naive_negatives(negatives, negative_ids):
    """Hard negatives row-major as [(vector, text id or None)]."""
    return [
        (negatives[b][n], None if negative_ids is None else negative_ids[b][n])
        for b in range(len(negatives))
        for n in range(len(negatives[b]))
    ]


def naive_direction(queries, keys, negatives, query_ids, key_ids, negative_ids, tau, duplicates):
    """Loss of every query i: candidates are all keys, then all hard negatives (row-major)."""
    batch = len(queries)
    candidates = [(keys[j], None if key_ids is None else key_ids[j], j) for j in range(batch)]
    candidates += [(vector, text_id, None) for vector, text_id in naive_negatives(negatives, negative_ids)]
    losses = []
    for i in range(batch):
        marked = []
        for vector, text_id, key_index in candidates:
            duplicate = text_id is not None and key_ids is not None and text_id == key_ids[i]
            duplicate |= text_id is not None and query_ids is not None and text_id == query_ids[i]
            duplicate |= key_index is not None and query_ids is not None and query_ids[key_index] == query_ids[i]
            marked.append((vector, key_index == i, duplicate))
        losses.append(naive_query_loss(queries[i], marked, tau, duplicates))
    return losses


def naive_all_texts(anchor, positive, negatives, anchor_ids, positive_ids, negative_ids, tau, duplicates):
    """candidates="all": loss of every pair side (anchors, then positives) against every other text of the batch."""
    batch = len(anchor)
    texts = [(anchor[i], None if anchor_ids is None else anchor_ids[i], batch + i) for i in range(batch)]
    texts += [(positive[i], None if positive_ids is None else positive_ids[i], i) for i in range(batch)]
    texts += [(vector, text_id, None) for vector, text_id in naive_negatives(negatives, negative_ids)]
    losses = []
    for r in range(2 * batch):
        query, query_id, partner = texts[r]
        partner_id = texts[partner][1]
        marked = []
        for c, (vector, text_id, c_partner) in enumerate(texts):
            if c == r:
                continue
            c_partner_id = None if c_partner is None else texts[c_partner][1]
            duplicate = text_id is not None and text_id in (query_id, partner_id)
            duplicate |= c_partner_id is not None and c_partner_id == query_id
            marked.append((vector, c == partner, duplicate))
        losses.append(naive_query_loss(query, marked, tau, duplicates))
    return losses


def naive_in_batch(
    anchor,
    positive,
    negative=None,
    tau=0.05,
    anchor_ids=None,
    positive_ids=None,
    negative_ids=None,
    duplicates="positive",
    symmetric=False,
    labels=None,
    min_score=None,
    candidates="positives",
):
    negatives = [] if negative is None else [list(row) for row in negative]
    if candidates == "all":
        losses = naive_all_texts(anchor, positive, negatives, anchor_ids, positive_ids, negative_ids, tau, duplicates)
    else:
        losses = naive_direction(anchor, positive, negatives, anchor_ids, positive_ids, negative_ids, tau, duplicates)
    if symmetric:
        back = naive_direction(positive, anchor, [], positive_ids, anchor_ids, None, tau, duplicates)
        losses = [(f + b) / 2 for f, b in zip(losses, back, strict=True)]
    rows = range(len(losses))
    if min_score is not None and labels is not None:
        rows = [i for i in rows if labels[i % len(anchor)] >= min_score]  # both sides of a pair with "all"
    if not rows:
        return 0.0
    return sum(losses[i] for i in rows) / len(rows)


# Deliberate duplicates: anchors 0 and 2 are the same text; positive 3 repeats positive 0; positive 4 is the text of
# anchor 1; negative (5, 0) repeats positive 5 and negative (1, 1) repeats anchor 1.
ANCHOR_IDS = [0, 1, 0, 2, 3, 4]
POSITIVE_IDS = [10, 11, 12, 10, 1, 13]
NEGATIVE_IDS = [[20, 21], [22, 1], [23, 24], [10, 25], [26, 27], [13, 28]]


def batch(seed: int, n_neg: int = 2, size: int = 6, hidden: int = 8):
    torch.manual_seed(seed)
    return torch.randn(size, hidden), torch.randn(size, hidden), torch.randn(size, n_neg, hidden)


def test_plain_matches_cross_entropy_and_naive_loop():
    anchor, positive, _ = batch(0)
    got = InBatchNegativesLoss(temperature=0.05)(anchor, positive)
    logits = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).T / 0.05
    torch.testing.assert_close(got, F.cross_entropy(logits, torch.arange(6)))
    assert got.item() == pytest.approx(naive_in_batch(anchor, positive), rel=1e-5)


@pytest.mark.parametrize("n_neg", [1, 3])
def test_hard_negatives_match_naive_loop(n_neg):
    anchor, positive, negative = batch(1, n_neg=n_neg)
    got = InBatchNegativesLoss(temperature=0.1)(anchor, positive, negative)
    assert got.item() == pytest.approx(naive_in_batch(anchor, positive, negative, tau=0.1), rel=1e-5)


def test_two_dim_negative_is_one_negative_per_row():
    anchor, positive, negative = batch(2, n_neg=1)
    loss = InBatchNegativesLoss()
    torch.testing.assert_close(loss(anchor, positive, negative[:, 0]), loss(anchor, positive, negative))


@pytest.mark.parametrize("duplicates", ["positive", "ignore"])
@pytest.mark.parametrize("with_negatives", [False, True])
def test_duplicates_match_naive_loop_and_change_the_loss(duplicates, with_negatives):
    anchor, positive, negative = batch(3)
    kwargs = {"anchor_ids": torch.tensor(ANCHOR_IDS), "positive_ids": torch.tensor(POSITIVE_IDS)}
    naive_kwargs = {"anchor_ids": ANCHOR_IDS, "positive_ids": POSITIVE_IDS}
    if not with_negatives:
        negative = None
    else:
        kwargs["negative_ids"] = torch.tensor(NEGATIVE_IDS)
        naive_kwargs["negative_ids"] = NEGATIVE_IDS
    loss = InBatchNegativesLoss(temperature=0.05, duplicates=duplicates)
    got = loss(anchor, positive, negative, **kwargs)
    expected = naive_in_batch(anchor, positive, negative, duplicates=duplicates, **naive_kwargs)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    plain = loss(anchor, positive, negative)
    assert abs(got.item() - plain.item()) > 1e-3


def test_duplicate_negative_ids_matter():
    anchor, positive, negative = batch(4)
    ids = {"anchor_ids": torch.tensor(ANCHOR_IDS), "positive_ids": torch.tensor(POSITIVE_IDS)}
    loss = InBatchNegativesLoss()
    without = loss(anchor, positive, negative, **ids)
    with_neg_ids = loss(anchor, positive, negative, **ids, negative_ids=torch.tensor(NEGATIVE_IDS))
    assert abs(without.item() - with_neg_ids.item()) > 1e-3


def test_distinct_ids_equal_plain_loss():
    anchor, positive, negative = batch(5)
    loss = InBatchNegativesLoss()
    got = loss(
        anchor,
        positive,
        negative,
        anchor_ids=torch.arange(6),
        positive_ids=torch.arange(6) + 100,
        negative_ids=torch.arange(12).reshape(6, 2) + 200,
    )
    torch.testing.assert_close(got, loss(anchor, positive, negative))


def test_only_anchor_ids():
    anchor, positive, _ = batch(6)
    got = InBatchNegativesLoss()(anchor, positive, anchor_ids=torch.tensor(ANCHOR_IDS))
    assert got.item() == pytest.approx(naive_in_batch(anchor, positive, anchor_ids=ANCHOR_IDS), rel=1e-5)


@pytest.mark.parametrize("duplicates", ["positive", "ignore"])
def test_symmetric_matches_naive_loop(duplicates):
    anchor, positive, negative = batch(7)
    loss = InBatchNegativesLoss(temperature=0.05, symmetric=True, duplicates=duplicates)
    got = loss(anchor, positive, negative)
    assert got.item() == pytest.approx(naive_in_batch(anchor, positive, negative, symmetric=True), rel=1e-5)
    got_ids = loss(
        anchor,
        positive,
        negative,
        anchor_ids=torch.tensor(ANCHOR_IDS),
        positive_ids=torch.tensor(POSITIVE_IDS),
        negative_ids=torch.tensor(NEGATIVE_IDS),
    )
    expected = naive_in_batch(
        anchor,
        positive,
        negative,
        anchor_ids=ANCHOR_IDS,
        positive_ids=POSITIVE_IDS,
        negative_ids=NEGATIVE_IDS,
        duplicates=duplicates,
        symmetric=True,
    )
    assert got_ids.item() == pytest.approx(expected, rel=1e-5)


def test_all_texts_plain_matches_cross_entropy_over_the_whole_batch():
    anchor, positive, _ = batch(13)
    got = InBatchNegativesLoss(temperature=0.05, candidates="all")(anchor, positive)
    texts = F.normalize(torch.cat([anchor, positive]), dim=-1)  # (12, 8)
    logits = (texts @ texts.T / 0.05).masked_fill(torch.eye(12, dtype=torch.bool), float("-inf"))
    torch.testing.assert_close(got, F.cross_entropy(logits, (torch.arange(12) + 6) % 12))
    assert got.item() == pytest.approx(naive_in_batch(anchor, positive, candidates="all"), rel=1e-5)
    # more negatives than the positives-only form, so a different loss
    assert got.item() != pytest.approx(InBatchNegativesLoss(temperature=0.05)(anchor, positive).item(), rel=1e-3)


@pytest.mark.parametrize("duplicates", ["positive", "ignore"])
@pytest.mark.parametrize("with_negatives", [False, True])
def test_all_texts_duplicates_match_naive_loop(duplicates, with_negatives):
    anchor, positive, negative = batch(14)
    kwargs = {"anchor_ids": ANCHOR_IDS, "positive_ids": POSITIVE_IDS}
    if with_negatives:
        kwargs["negative_ids"] = NEGATIVE_IDS
    else:
        negative = None
    loss = InBatchNegativesLoss(temperature=0.1, duplicates=duplicates, candidates="all")
    got = loss(anchor, positive, negative, **{name: torch.tensor(ids) for name, ids in kwargs.items()})
    expected = naive_in_batch(anchor, positive, negative, 0.1, duplicates=duplicates, candidates="all", **kwargs)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert abs(got.item() - loss(anchor, positive, negative).item()) > 1e-3
    # one id tensor alone: the texts without ids match nothing
    only_anchor = loss(anchor, positive, negative, anchor_ids=torch.tensor(ANCHOR_IDS))
    expected = naive_in_batch(anchor, positive, negative, 0.1, ANCHOR_IDS, duplicates=duplicates, candidates="all")
    assert only_anchor.item() == pytest.approx(expected, rel=1e-5)


def test_all_texts_min_score_keeps_both_sides_of_high_rows():
    anchor, positive, negative = batch(15)
    labels = [5.0, 1.0, 4.0, 0.5, 3.0, 2.0]
    loss = InBatchNegativesLoss(min_score=3.0, candidates="all")
    got = loss(anchor, positive, negative, labels=torch.tensor(labels))
    expected = naive_in_batch(anchor, positive, negative, labels=labels, min_score=3.0, candidates="all")
    assert got.item() == pytest.approx(expected, rel=1e-5)
    zero = InBatchNegativesLoss(min_score=10.0, candidates="all")(
        anchor.requires_grad_(), positive, labels=torch.zeros(6)
    )
    assert zero.item() == 0.0 and zero.grad_fn is not None


@pytest.mark.parametrize("duplicates", ["positive", "ignore"])
def test_all_texts_grad_finite_when_texts_repeat(duplicates):
    torch.manual_seed(16)
    anchor = torch.randn(6, 8, requires_grad=True)
    positive = (anchor.detach() + 1e-6 * torch.randn(6, 8)).requires_grad_()
    loss = InBatchNegativesLoss(duplicates=duplicates, candidates="all")
    loss(anchor, positive, anchor_ids=torch.tensor(ANCHOR_IDS), positive_ids=torch.tensor(ANCHOR_IDS)).backward()
    assert torch.isfinite(anchor.grad).all() and torch.isfinite(positive.grad).all()


def test_min_score_keeps_only_high_rows_as_queries():
    anchor, positive, _ = batch(8)
    labels = [5.0, 1.0, 4.0, 0.5, 3.0, 2.0]
    loss = InBatchNegativesLoss(min_score=3.0)
    got = loss(anchor, positive, labels=torch.tensor(labels))
    expected = naive_in_batch(anchor, positive, labels=labels, min_score=3.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() != pytest.approx(naive_in_batch(anchor, positive), rel=1e-3)
    # without labels every row is a query
    torch.testing.assert_close(loss(anchor, positive), InBatchNegativesLoss()(anchor, positive))


def test_min_score_with_no_qualifying_row_is_zero_with_grad():
    anchor, positive, _ = batch(9)
    anchor.requires_grad_()
    got = InBatchNegativesLoss(min_score=10.0)(anchor, positive, labels=torch.zeros(6))
    assert got.item() == 0.0
    assert got.grad_fn is not None
    got.backward()
    assert torch.isfinite(anchor.grad).all()
    assert (anchor.grad == 0).all()


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("duplicates", ["positive", "ignore"])
def test_grad_finite_when_anchor_equals_positive(symmetric, duplicates):
    torch.manual_seed(10)
    anchor = torch.randn(6, 8, requires_grad=True)
    positive = (anchor.detach() + 1e-6 * torch.randn(6, 8)).requires_grad_()
    negative = torch.randn(6, 2, 8, requires_grad=True)
    loss = InBatchNegativesLoss(symmetric=symmetric, duplicates=duplicates)
    loss(
        anchor,
        positive,
        negative,
        anchor_ids=torch.tensor(ANCHOR_IDS),
        positive_ids=torch.tensor(POSITIVE_IDS),
        negative_ids=torch.tensor(NEGATIVE_IDS),
    ).backward()
    for t in (anchor, positive, negative):
        assert torch.isfinite(t.grad).all()


def test_bf16_inputs():
    anchor, positive, negative = batch(11)
    got = InBatchNegativesLoss()(anchor.bfloat16(), positive.bfloat16(), negative.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(InBatchNegativesLoss()(anchor, positive, negative).item(), rel=5e-2)


def test_errors():
    anchor, positive, negative = batch(12)
    for tau in (0.0, -0.5):
        with pytest.raises(ValueError, match="temperature"):
            InBatchNegativesLoss(temperature=tau)
    with pytest.raises(ValueError, match="duplicates"):
        InBatchNegativesLoss(duplicates="merge")
    with pytest.raises(ValueError, match="candidates must be one of positives, all"):
        InBatchNegativesLoss(candidates="everything")
    with pytest.raises(ValueError, match="symmetric=True has no meaning with candidates='all'"):
        InBatchNegativesLoss(symmetric=True, candidates="all")
    loss = InBatchNegativesLoss()
    with pytest.raises(ValueError, match="anchor_ids"):
        loss(anchor, positive, anchor_ids=torch.arange(5))
    with pytest.raises(ValueError, match="positive_ids"):
        loss(anchor, positive, positive_ids=torch.arange(6.0))
    with pytest.raises(ValueError, match="negative_ids"):
        loss(anchor, positive, negative_ids=torch.arange(6))
    with pytest.raises(ValueError, match="negative_ids"):
        loss(anchor, positive, negative, negative_ids=torch.arange(6))
    with pytest.raises(ValueError, match="negative must have"):
        loss(anchor, positive, torch.randn(5, 8))
    with pytest.raises(ValueError, match="labels"):
        loss(anchor, positive, labels=torch.ones(2))
