"""Matryoshka2dLoss: an exact sum over (layer, size) pairs without sampling; seeded, paper-shaped draws with it."""

import pytest
import torch

from lightembed.losses import AnglEObjectiveLoss, CoSENTLoss, InBatchNegativesLoss, Matryoshka2dLoss
from lightembed.losses.base import EmbeddingLoss

B, K, H = 6, 3, 16
DIMS = [16, 8, 4]
DIM_WEIGHTS = [1.0, 0.5, 2.0]
LABELS = torch.tensor([4.8, 4.5, 0.4, 4.0, 3.6, 4.2], dtype=torch.float64)


def _inputs(seed: int = 0, negative: bool = False):
    g = torch.Generator().manual_seed(seed)
    make = lambda: torch.randn(B, K, H, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    return make(), make(), make() if negative else None


def _naive(inner, anchor, positive, negative, labels, last_w, prior_w, layer_w, kl_w, tau):
    """The loss written out: every layer, every size, one KL term per earlier layer, row by row."""
    total = 0.0
    for j in range(K):
        weight = last_w if j == K - 1 else prior_w * layer_w[j] / (K - 1)
        for d, w in zip(DIMS, DIM_WEIGHTS, strict=True):
            neg = None if negative is None else negative[:, j, :d]
            total = total + weight * w * inner(anchor[:, j, :d], positive[:, j, :d], neg, labels=labels)
    rows = [x for x in (anchor, positive, negative) if x is not None]
    for j in range(K - 1):
        kl = 0.0
        count = 0
        for x in rows:
            for r in range(x.shape[0]):
                p = torch.softmax(x[r, K - 1].detach() / tau, dim=0)
                log_q = torch.log_softmax(x[r, j] / tau, dim=0)
                kl = kl + (p * (p.log() - log_q)).sum()
                count += 1
        total = total + kl_w * tau * kl / count
    return total


CASES = {
    "angle-labels": (AnglEObjectiveLoss, False, LABELS),
    "cosent-labels": (CoSENTLoss, False, LABELS),
    "in-batch-hard-negative": (InBatchNegativesLoss, True, None),
}


@pytest.mark.parametrize("name", CASES)
def test_without_sampling_equals_the_naive_sum_with_exact_gradients(name):
    make, with_negative, labels = CASES[name]
    inner = make()
    anchor, positive, negative = _inputs(negative=with_negative)
    options = {"last_w": 1.5, "prior_w": 0.7, "layer_w": [2.0, 0.5], "kl_w": 0.8, "tau": 0.3}
    loss_fn = Matryoshka2dLoss(
        inner,
        [8, 16, 4],
        [0.5, 1.0, 2.0],
        n_layers_per_step=None,
        n_dims_per_step=None,
        last_layer_weight=options["last_w"],
        prior_layers_weight=options["prior_w"],
        layer_weights=options["layer_w"],
        kl_weight=options["kl_w"],
        kl_temperature=options["tau"],
    )
    inputs = [t for t in (anchor, positive, negative) if t is not None]
    loss = loss_fn(anchor, positive, negative, labels)
    grads = torch.autograd.grad(loss, inputs)
    reference = _naive(inner, anchor, positive, negative, labels, **options)
    ref_grads = torch.autograd.grad(reference, inputs)
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # a second call (another draw number) gives the same exact sum: nothing is sampled
    torch.testing.assert_close(loss_fn(anchor, positive, negative, labels), loss)


def test_kl_term_is_zero_for_identical_layers_and_teaches_only_the_earlier_layer():
    anchor, positive, _ = _inputs()
    same = anchor[:, -1:].expand(B, K, H)  # every layer holds the last layer's embeddings
    same_positive = positive[:, -1:].expand(B, K, H)
    loss = Matryoshka2dLoss(CoSENTLoss(), DIMS, n_layers_per_step=None, n_dims_per_step=None, kl_weight=1.0)
    no_kl = Matryoshka2dLoss(CoSENTLoss(), DIMS, n_layers_per_step=None, n_dims_per_step=None, kl_weight=0.0)
    torch.testing.assert_close(
        loss(same, same_positive, labels=LABELS), no_kl(same, same_positive, labels=LABELS), rtol=1e-12, atol=1e-12
    )
    # the last layer is the teacher: the KL term's gradient reaches the earlier layers only
    grad_with = torch.autograd.grad(loss(anchor, positive, labels=LABELS), anchor)[0]
    grad_without = torch.autograd.grad(no_kl(anchor, positive, labels=LABELS), anchor)[0]
    torch.testing.assert_close(grad_with[:, -1], grad_without[:, -1])
    assert not torch.allclose(grad_with[:, :-1], grad_without[:, :-1])


class Recorder(EmbeddingLoss):
    """Records (layer, size) of every call: anchor[b, j, h] = 1000 j + h identifies the layer by its first value."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []

    def forward(self, anchor, positive=None, negative=None, labels=None, **kwargs):
        self.calls.append((int(anchor[0, 0].item()) // 1000, anchor.shape[-1]))
        return anchor.sum() * 0


def _layered(layers: int = 5) -> torch.Tensor:
    return (1000 * torch.arange(layers)[:, None] + torch.arange(H)[None, :]).float().expand(B, layers, H)


def test_sampling_follows_the_paper_and_is_reproducible_from_the_seed():
    def draws(seed: int, steps: int = 12) -> list[list[tuple[int, int]]]:
        recorder = Recorder()
        loss = Matryoshka2dLoss(recorder, DIMS, n_layers_per_step=1, n_dims_per_step=1, kl_weight=0.0, seed=seed)
        out = []
        for _ in range(steps):
            recorder.calls.clear()
            loss(_layered())
            out.append(list(recorder.calls))
        return out

    runs = draws(0)
    for calls in runs:
        # the last layer at full size and one smaller size, then one earlier layer at full size and one smaller
        assert len(calls) == 4
        (last, d0), (last_again, d1), (prior, d2), (prior_again, d3) = calls
        assert last == last_again == 4 and prior == prior_again and prior < 4
        assert d0 == d2 == 16 and d1 in (8, 4) and d3 in (8, 4)
    assert len({calls[2][0] for calls in runs}) > 1, "the earlier layer is drawn, not fixed"
    assert draws(0) == runs
    assert draws(1) != runs


def test_n_per_step_larger_than_available_uses_all():
    recorder = Recorder()
    Matryoshka2dLoss(recorder, DIMS, n_layers_per_step=9, n_dims_per_step=9, kl_weight=0.0)(_layered(3))
    assert sorted(recorder.calls) == sorted((j, d) for j in range(3) for d in DIMS)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_layers_per_step": 0}, "n_layers_per_step must be a positive integer or None"),
        ({"n_dims_per_step": -1}, "n_dims_per_step must be a positive integer or None"),
        ({"last_layer_weight": -1.0}, "last_layer_weight must be >= 0"),
        ({"kl_temperature": 0.0}, "kl_temperature must be > 0"),
        ({"layer_weights": [1.0, -2.0]}, "layer_weights must be >= 0"),
        ({"dims": [8, 8]}, r"dims must be distinct, got \[8, 8\]"),
    ],
)
def test_constructor_validation(options, message):
    options = {"dims": DIMS, **options}
    with pytest.raises(ValueError, match=message):
        Matryoshka2dLoss(CoSENTLoss(), **options)


def test_input_validation():
    anchor, positive, _ = _inputs()
    loss = Matryoshka2dLoss(CoSENTLoss(), DIMS)
    with pytest.raises(ValueError, match=r"per-layer embeddings anchor \(B, K, H\), got \(6, 16\).*pool_layers"):
        loss(anchor[:, -1], positive[:, -1], labels=LABELS)
    with pytest.raises(ValueError, match="positive must have the anchor's layers and size"):
        loss(anchor, positive[:, :2], labels=LABELS)
    with pytest.raises(ValueError, match="dims must be <= the embedding size 16, got 32"):
        Matryoshka2dLoss(CoSENTLoss(), [32, 8])(anchor, positive, labels=LABELS)
    with pytest.raises(ValueError, match="layer_weights has 1 entries for 2 earlier layers"):
        Matryoshka2dLoss(CoSENTLoss(), DIMS, layer_weights=[1.0])(anchor, positive, labels=LABELS)


def test_kl_uses_float32_for_bf16_embeddings():
    anchor, positive, _ = _inputs()
    loss = Matryoshka2dLoss(CoSENTLoss(), DIMS, n_layers_per_step=None, n_dims_per_step=None)
    low = loss(anchor.detach().bfloat16(), positive.detach().bfloat16(), labels=LABELS)
    assert low.dtype == torch.float32 and torch.isfinite(low)
