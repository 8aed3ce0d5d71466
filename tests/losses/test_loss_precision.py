"""Losses compute in float32 under bf16 autocast: a similarity matmul in bf16 would shift logits divided by a small
temperature by a visible amount."""

from __future__ import annotations

import pytest
import torch

from lightembed.losses import AnglEObjectiveLoss, GISTEmbedLoss, InBatchNegativesLoss, MatryoshkaLoss
from lightembed.losses.base import EmbeddingLoss


class _Probe(EmbeddingLoss):
    """Records whether autocast was on while the loss ran."""

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        self.autocast_seen = torch.is_autocast_enabled("cpu")
        return (anchor @ positive.T).sum()


def test_a_loss_runs_with_autocast_off_and_restores_it_after():
    probe = _Probe()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = probe(torch.randn(4, 8), torch.randn(4, 8))
        assert torch.is_autocast_enabled("cpu")  # only the loss's own call is float32
    assert probe.autocast_seen is False and value.dtype == torch.float32


@pytest.mark.parametrize(
    "loss",
    [InBatchNegativesLoss(), AnglEObjectiveLoss(), MatryoshkaLoss(InBatchNegativesLoss(), [32, 16])],
    ids=["in_batch", "angle", "matryoshka"],
)
def test_the_loss_and_its_gradient_under_bf16_autocast_equal_float32(loss):
    generator = torch.Generator().manual_seed(0)
    anchor = torch.randn(16, 32, generator=generator, requires_grad=True)
    positive = torch.randn(16, 32, generator=generator)
    labels = torch.rand(16, generator=generator)
    reference = loss(anchor, positive, labels=labels)
    (grad_reference,) = torch.autograd.grad(reference, anchor)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(anchor, positive, labels=labels)
    (grad_mixed,) = torch.autograd.grad(mixed, anchor)
    assert mixed.item() == reference.item()
    torch.testing.assert_close(grad_mixed, grad_reference, rtol=0, atol=0)


def test_a_guided_loss_keyword_tensors_also_run_in_float32():
    generator = torch.Generator().manual_seed(1)
    a, p, ga, gp = (torch.randn(8, 16, generator=generator) for _ in range(4))
    loss = GISTEmbedLoss()
    reference = loss(a, p, guide_anchor=ga, guide_positive=gp)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(a, p, guide_anchor=ga, guide_positive=gp).item() == reference.item()
