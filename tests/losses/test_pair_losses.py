"""Contrastive, online contrastive, cosine-similarity, softmax, triplet and MegaBatchMargin losses: each against a
naive per-row loop and against sentence-transformers' implementation on the same embeddings."""

import math

import pytest
import torch

from lightembed.losses import (
    ContrastiveLoss,
    CosineSimilarityLoss,
    MegaBatchMarginLoss,
    OnlineContrastiveLoss,
    SoftmaxLoss,
    TripletLoss,
)

B, H = 8, 12
TOL = {"rtol": 1e-6, "atol": 1e-6}
# sentence-transformers' euclidean metric is F.pairwise_distance with eps=1e-6 added to each difference; lightembed
# takes the exact distance, which moves gradients by ~2e-6
GRAD_TOL = {"rtol": 1e-5, "atol": 1e-5}


def _emb(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


ANCHOR, POSITIVE, NEGATIVE = _emb(0, B, H), _emb(1, B, H), _emb(2, B, H)
PAIR_LABELS = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
SCORES = torch.rand(B, generator=torch.Generator().manual_seed(3))


def _cos(u, v):
    return float(u @ v / (u.norm() * v.norm()))


def _dist(u, v, distance):
    return 1 - _cos(u, v) if distance == "cosine" else float((u - v).norm())


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_contrastive_matches_loop(distance):
    margin = 0.5 if distance == "cosine" else 5.0
    got = ContrastiveLoss(margin, distance)(ANCHOR, POSITIVE, labels=PAIR_LABELS)
    terms = []
    for u, v, y in zip(ANCHOR, POSITIVE, PAIR_LABELS.tolist(), strict=True):
        d = _dist(u, v, distance)
        terms.append(0.5 * (d**2 if y == 1 else max(0.0, margin - d) ** 2))
    assert got.item() == pytest.approx(sum(terms) / B, rel=1e-5)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_online_contrastive_matches_loop(distance):
    margin = 0.5 if distance == "cosine" else 5.0
    got = OnlineContrastiveLoss(margin, distance)(ANCHOR, POSITIVE, labels=PAIR_LABELS)
    d = [_dist(u, v, distance) for u, v in zip(ANCHOR, POSITIVE, strict=True)]
    pos = [x for x, y in zip(d, PAIR_LABELS.tolist(), strict=True) if y == 1]
    neg = [x for x, y in zip(d, PAIR_LABELS.tolist(), strict=True) if y == 0]
    want = sum(x**2 for x in pos if x > min(neg)) + sum(max(0.0, margin - x) ** 2 for x in neg if x < max(pos))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_pair_losses_refuse_bad_labels():
    with pytest.raises(ValueError, match="ContrastiveLoss takes 0/1 labels"):
        ContrastiveLoss()(ANCHOR, POSITIVE, labels=SCORES)
    with pytest.raises(ValueError, match="OnlineContrastiveLoss needs labels"):
        OnlineContrastiveLoss()(ANCHOR, POSITIVE)
    with pytest.raises(ValueError, match="distance must be one of cosine, euclidean, got 'manhattan'"):
        ContrastiveLoss(distance="manhattan")
    with pytest.raises(ValueError, match="CosineSimilarityLoss needs labels"):
        CosineSimilarityLoss()(ANCHOR, POSITIVE)
    with pytest.raises(ValueError, match="TripletLoss needs negative"):
        TripletLoss()(ANCHOR, POSITIVE)


def test_cosine_similarity_matches_loop():
    got = CosineSimilarityLoss()(ANCHOR, POSITIVE, labels=SCORES)
    want = sum((_cos(u, v) - y) ** 2 for u, v, y in zip(ANCHOR, POSITIVE, SCORES.tolist(), strict=True)) / B
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_softmax_matches_loop_and_its_head_trains():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss = SoftmaxLoss(num_labels=3, embedding_dim=H)
    got = loss(ANCHOR, POSITIVE, labels=labels)
    w, b = loss.classifier.weight, loss.classifier.bias
    want = 0.0
    for u, v, y in zip(ANCHOR, POSITIVE, labels.tolist(), strict=True):
        logits = [float(w[c].detach() @ torch.cat([u, v, (u - v).abs()]) + b[c].detach()) for c in range(3)]
        want -= logits[y] - math.log(sum(math.exp(x) for x in logits))
    assert got.item() == pytest.approx(want / B, rel=1e-5)
    got.backward()
    assert loss.classifier.weight.grad is not None  # the head trains with the loss
    with pytest.raises(ValueError, match="built for embedding_dim=4, got embeddings of size 12"):
        SoftmaxLoss(num_labels=3, embedding_dim=4)(ANCHOR, POSITIVE, labels=labels)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_triplet_matches_loop_with_several_negatives(distance):
    negatives = _emb(4, B, 3, H)
    margin = 0.3 if distance == "cosine" else 5.0
    got = TripletLoss(margin, distance)(ANCHOR, POSITIVE, negatives)
    want = [
        max(0.0, _dist(a, p, distance) - _dist(a, n, distance) + margin)
        for a, p, ns in zip(ANCHOR, POSITIVE, negatives, strict=True)
        for n in ns
    ]
    assert got.item() == pytest.approx(sum(want) / len(want), rel=1e-5)


def test_mega_batch_margin_matches_loop_with_hard_negatives():
    got = MegaBatchMarginLoss()(ANCHOR, POSITIVE, NEGATIVE)
    candidates = list(POSITIVE) + list(NEGATIVE)
    want = 0.0
    for i, a in enumerate(ANCHOR):
        hardest = max(_cos(a, c) for j, c in enumerate(candidates) if j != i)
        want += max(0.0, 0.8 - _cos(a, POSITIVE[i])) + max(0.0, hardest - 0.3)
    assert got.item() == pytest.approx(want / B, rel=1e-5)


# sentence-transformers parity: their losses on the very same embeddings


@pytest.fixture
def st_losses():
    return pytest.importorskip("sentence_transformers.sentence_transformer.losses")


def _assert_same_with_grads(ours, theirs, *tensors):
    """``ours(*copies)`` equals ``theirs(*other copies)`` in value and in its gradient w.r.t. every input."""
    mine = [t.clone().requires_grad_(True) for t in tensors]
    other = [t.clone().requires_grad_(True) for t in tensors]
    got, want = ours(*mine), theirs(*other)
    torch.testing.assert_close(got, want, **TOL)
    for a, b in zip(torch.autograd.grad(got, mine), torch.autograd.grad(want, other), strict=True):
        torch.testing.assert_close(a, b, **GRAD_TOL)


def _st_metric(st_losses, distance):
    metric = st_losses.SiameseDistanceMetric
    return metric.COSINE_DISTANCE if distance == "cosine" else metric.EUCLIDEAN


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_contrastive_family_matches_sentence_transformers(st_losses, distance):
    metric = _st_metric(st_losses, distance)
    pairs = [(ContrastiveLoss, st_losses.ContrastiveLoss), (OnlineContrastiveLoss, st_losses.OnlineContrastiveLoss)]
    for make_ours, make_theirs in pairs:
        ours, theirs = make_ours(0.7, distance), make_theirs(None, distance_metric=metric, margin=0.7)
        _assert_same_with_grads(
            lambda a, p: ours(a, p, labels=PAIR_LABELS),  # noqa: B023 (called inside the loop)
            lambda a, p: theirs.compute_loss_from_embeddings([a, p], PAIR_LABELS),  # noqa: B023
            ANCHOR,
            POSITIVE,
        )


def test_cosine_similarity_matches_sentence_transformers(st_losses):
    theirs = st_losses.CosineSimilarityLoss(None)
    _assert_same_with_grads(
        lambda a, p: CosineSimilarityLoss()(a, p, labels=SCORES),
        lambda a, p: theirs.compute_loss_from_embeddings([a, p], SCORES),
        ANCHOR,
        POSITIVE,
    )


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_triplet_matches_sentence_transformers(st_losses, distance):
    metric = st_losses.TripletDistanceMetric
    st_metric = metric.COSINE if distance == "cosine" else metric.EUCLIDEAN
    theirs = st_losses.TripletLoss(None, distance_metric=st_metric, triplet_margin=1.0)
    _assert_same_with_grads(
        TripletLoss(1.0, distance),
        lambda a, p, n: theirs.compute_loss_from_embeddings([a, p, n], None),
        ANCHOR,
        POSITIVE,
        NEGATIVE,
    )


def test_mega_batch_margin_matches_sentence_transformers(st_losses):
    theirs = st_losses.MegaBatchMarginLoss.__new__(st_losses.MegaBatchMarginLoss)  # their constructor wants a model
    torch.nn.Module.__init__(theirs)
    theirs.positive_margin, theirs.negative_margin, theirs.mini_batch_size = 0.8, 0.3, B
    _assert_same_with_grads(MegaBatchMarginLoss(), lambda a, p: theirs.calculate_loss([[a], [p]]), ANCHOR, POSITIVE)


def test_softmax_matches_sentence_transformers(st_losses, monkeypatch):
    from sentence_transformers.sentence_transformer.losses import softmax as st_softmax

    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    ours = SoftmaxLoss(num_labels=3, embedding_dim=H)
    model = torch.nn.Linear(1, 1)  # a stand-in: the embeddings come from the patched embed_columns
    model.device = torch.device("cpu")
    theirs = st_softmax.SoftmaxLoss(model, embedding_dimension=H, num_labels=3)
    theirs.classifier.load_state_dict(ours.classifier.state_dict())
    monkeypatch.setattr(st_softmax, "embed_columns", lambda model, features: [ANCHOR, POSITIVE])
    torch.testing.assert_close(ours(ANCHOR, POSITIVE, labels=labels), theirs([{}, {}], labels), **TOL)


def _softmax_stage_grads(tiny_bert_dir, tokenizer, micro_batch_size):
    from lightembed.data.collators import PairCollator
    from lightembed.encoder import EncoderSettings
    from lightembed.stages import ContrastiveModule

    rows = [{"anchor": f"sentence {i} here", "positive": f"another text {i}", "score": float(i % 3)} for i in range(4)]
    batch = PairCollator(tokenizer, max_length=16)(rows)
    settings = EncoderSettings(backbone=str(tiny_bert_dir), max_length=16, dropout=0.0)
    torch.manual_seed(0)  # the same classifier head in every call
    module = ContrastiveModule(settings, loss=SoftmaxLoss(3, 32), micro_batch_size=micro_batch_size)
    module.configure_model()
    module.training_step(batch, 0).backward()
    return module


def test_softmax_head_trains_with_the_stage_and_stays_out_of_the_encoder(tiny_bert_dir, tokenizer):
    module = _softmax_stage_grads(tiny_bert_dir, tokenizer, micro_batch_size=None)
    assert {"loss.classifier.weight", "loss.classifier.bias"} <= {n for n, _ in module.named_parameters()}
    assert module.loss.classifier.weight.grad is not None and module.loss.classifier.weight.grad.abs().sum() > 0
    assert not any("classifier" in key for key in module.encoder.state_dict())  # export saves the encoder only


def test_softmax_head_trains_under_gradcache_with_the_plain_step_gradients(tiny_bert_dir, tokenizer):
    """GradCache hands the loss's own parameters (the classifier head) their gradients through the trainer's
    backward: with dropout off they equal one plain full-batch step's, like the encoder's."""
    cached = _softmax_stage_grads(tiny_bert_dir, tokenizer, micro_batch_size=2)
    plain = _softmax_stage_grads(tiny_bert_dir, tokenizer, micro_batch_size=None)
    assert cached.loss.classifier.weight.grad is not None
    for (name, p_cached), p_plain in zip(cached.named_parameters(), plain.parameters(), strict=True):
        if p_plain.grad is not None:
            torch.testing.assert_close(p_cached.grad, p_plain.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_cosine_similarity_divides_by_score_scale_and_refuses_scores_off_the_cosine_scale():
    scaled = CosineSimilarityLoss(score_scale=5.0)(ANCHOR, POSITIVE, labels=SCORES * 5.0)
    torch.testing.assert_close(scaled, CosineSimilarityLoss()(ANCHOR, POSITIVE, labels=SCORES))
    with pytest.raises(ValueError, match="score_scale"):
        CosineSimilarityLoss()(ANCHOR, POSITIVE, labels=torch.full_like(SCORES, 4.0))  # STS-B's 0-5, unscaled
    with pytest.raises(ValueError, match="score_scale must be > 0"):
        CosineSimilarityLoss(score_scale=0.0)
