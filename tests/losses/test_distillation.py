"""EmbeddingMSELoss and MarginMSELoss: against naive per-row loops and sentence-transformers' MSELoss/MarginMSELoss."""

from types import SimpleNamespace

import pytest
import torch

from lightembed.losses.distillation import EmbeddingMSELoss, MarginMSELoss

B, H, T = 6, 8, 12
TOL = {"rtol": 1e-6, "atol": 1e-6}


def _emb(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


STUDENT, TEACHER, TEACHER_WIDE = _emb(0, B, H), _emb(1, B, H), _emb(2, B, T)
ANCHOR, POSITIVE, NEGATIVE = _emb(3, B, H), _emb(4, B, H), _emb(5, B, H)
NEGATIVES = _emb(6, B, 3, H)
TEACHER_MARGINS = _emb(7, B)


def _dot(u, v):
    return float(sum(a * b for a, b in zip(u.tolist(), v.tolist(), strict=True)))


def _cos(u, v):
    return _dot(u, v) / (_dot(u, u) ** 0.5 * _dot(v, v) ** 0.5)


def test_mse_matches_loop():
    got = EmbeddingMSELoss()(STUDENT, labels=TEACHER)
    want = 0.0
    for row_s, row_t in zip(STUDENT, TEACHER, strict=True):
        want += sum((s - t) ** 2 for s, t in zip(row_s.tolist(), row_t.tolist(), strict=True))
    assert got.item() == pytest.approx(want / (B * H), rel=1e-6)


@pytest.mark.parametrize("kind", ["learned", "fixed"])
def test_mse_projects_the_student_to_the_teacher_size(kind):
    loss = EmbeddingMSELoss(student_dim=H, teacher_dim=T, projection=kind, seed=3)
    weight = loss.projection.weight.detach()  # (T, H)
    bias = loss.projection.bias.detach() if loss.projection.bias is not None else torch.zeros(T)
    want = 0.0
    for s, t in zip(STUDENT, TEACHER_WIDE, strict=True):
        projected = [_dot(weight[k], s) + float(bias[k]) for k in range(T)]
        want += sum((p - float(x)) ** 2 for p, x in zip(projected, t, strict=True))
    assert loss(STUDENT, labels=TEACHER_WIDE).item() == pytest.approx(want / (B * T), rel=1e-5)
    trainable = [p for p in loss.parameters() if p.requires_grad]
    if kind == "learned":
        assert len(trainable) == 2  # weight and bias train with the student
    else:
        assert trainable == []
        # orthonormal columns: mapping up keeps the student's inner products
        torch.testing.assert_close(weight.T @ weight, torch.eye(H), atol=1e-5, rtol=0)
    # the same seed gives the same projection, whatever the global RNG did in between
    torch.manual_seed(123)
    again = EmbeddingMSELoss(student_dim=H, teacher_dim=T, projection=kind, seed=3)
    torch.testing.assert_close(again.projection.weight, loss.projection.weight)


def test_mse_build_projection_is_idempotent_and_checks_sizes():
    loss = EmbeddingMSELoss()
    loss.build_projection(H, T)
    layer = loss.projection
    loss.build_projection(H, T)
    assert loss.projection is layer
    with pytest.raises(ValueError, match="was built for student 8 -> teacher 12"):
        loss.build_projection(H, H)
    same = EmbeddingMSELoss()
    same.build_projection(H, H)
    assert same.projection is None


def test_mse_refuses_mismatched_or_missing_teacher_embeddings():
    with pytest.raises(ValueError, match="no projection"):
        EmbeddingMSELoss()(STUDENT, labels=TEACHER_WIDE)
    with pytest.raises(ValueError, match="teacher's embeddings as labels"):
        EmbeddingMSELoss()(STUDENT)
    with pytest.raises(ValueError, match="pass every text as `anchor`"):
        EmbeddingMSELoss()(STUDENT, TEACHER, labels=TEACHER)
    with pytest.raises(ValueError, match="both student_dim and teacher_dim"):
        EmbeddingMSELoss(student_dim=H)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_margin_mse_matches_loop(similarity):
    sim = _dot if similarity == "dot" else _cos
    got = MarginMSELoss(similarity)(ANCHOR, POSITIVE, NEGATIVE, labels=TEACHER_MARGINS)
    want = sum(
        (sim(q, p) - sim(q, n) - float(m)) ** 2
        for q, p, n, m in zip(ANCHOR, POSITIVE, NEGATIVE, TEACHER_MARGINS, strict=True)
    )
    assert got.item() == pytest.approx(want / B, rel=1e-5)


def test_margin_mse_with_several_negatives_and_teacher_scores():
    scores = _emb(8, B, 4)  # the teacher's score of the positive, then of each of 3 negatives
    got = MarginMSELoss()(ANCHOR, POSITIVE, NEGATIVES, labels=scores)
    want = 0.0
    for i in range(B):
        for k in range(3):
            student = _dot(ANCHOR[i], POSITIVE[i]) - _dot(ANCHOR[i], NEGATIVES[i, k])
            want += (student - float(scores[i, 0] - scores[i, k + 1])) ** 2
    assert got.item() == pytest.approx(want / (B * 3), rel=1e-5)
    # margins of the teacher's own embeddings are the targets the stage computes
    teacher = MarginMSELoss()
    margins = teacher.margins(ANCHOR, POSITIVE, NEGATIVE)  # (B, 1)
    assert margins.shape == (B, 1)
    assert teacher(ANCHOR, POSITIVE, NEGATIVE, labels=margins).item() == pytest.approx(0.0, abs=1e-10)


def test_margin_mse_refuses_bad_inputs():
    with pytest.raises(ValueError, match="triplets"):
        MarginMSELoss()(ANCHOR, POSITIVE)
    with pytest.raises(ValueError, match=r"labels must be the teacher's margins .* got \(6, 5\)"):
        MarginMSELoss()(ANCHOR, POSITIVE, NEGATIVES, labels=_emb(9, B, 5))
    with pytest.raises(ValueError, match="similarity must be"):
        MarginMSELoss("l2")


# sentence-transformers parity: their losses on the very same embeddings


@pytest.fixture
def st_losses():
    return pytest.importorskip("sentence_transformers.sentence_transformer.losses")


def _assert_same_with_grads(ours, theirs, *tensors):
    mine = [t.clone().requires_grad_(True) for t in tensors]
    other = [t.clone().requires_grad_(True) for t in tensors]
    got, want = ours(*mine), theirs(*other)
    torch.testing.assert_close(got, want, **TOL)
    for a, b in zip(torch.autograd.grad(got, mine), torch.autograd.grad(want, other), strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_mse_matches_sentence_transformers(st_losses):
    model = SimpleNamespace(get_embedding_dimension=lambda: H, device=torch.device("cpu"))
    theirs = st_losses.MSELoss(model, projection_dim=T)  # their constructor only asks the model for its size
    ours = EmbeddingMSELoss(student_dim=H, teacher_dim=T)
    theirs.projection.load_state_dict(ours.projection.state_dict())
    _assert_same_with_grads(
        lambda s: ours(s, labels=TEACHER_WIDE),
        lambda s: theirs.compute_loss_from_embeddings([s], [TEACHER_WIDE]),
        STUDENT,
    )
    plain = st_losses.MSELoss(model)
    _assert_same_with_grads(
        lambda s: EmbeddingMSELoss()(s, labels=TEACHER),
        lambda s: plain.compute_loss_from_embeddings([s], [TEACHER]),
        STUDENT,
    )


@pytest.mark.parametrize("several", [False, True])
def test_margin_mse_matches_sentence_transformers(st_losses, several):
    theirs = st_losses.MarginMSELoss(None)
    negatives = NEGATIVES if several else NEGATIVE
    labels = _emb(10, B, 3) if several else TEACHER_MARGINS

    def their_loss(a, p, n):
        columns = [a, p, *n.unbind(1)] if several else [a, p, n]
        return theirs.compute_loss_from_embeddings(columns, labels)

    _assert_same_with_grads(
        lambda a, p, n: MarginMSELoss()(a, p, n, labels=labels), their_loss, ANCHOR, POSITIVE, negatives
    )
