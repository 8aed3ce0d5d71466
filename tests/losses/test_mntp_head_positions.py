"""MNTPLoss with the vocabulary projection at the masked positions only equals the projection of every position."""

import pytest
import torch

from lightembed.losses import MNTPLoss

IGNORE = -100


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 9, 8, generator=generator, requires_grad=True)
    weight = torch.randn(13, 8, generator=generator)
    labels = torch.full((3, 9), IGNORE)
    selected = torch.rand(3, 9, generator=generator) < 0.3
    selected[:, 0] = False  # the collator never masks position 0
    labels[selected] = torch.randint(0, 13, (int(selected.sum()),), generator=generator)
    return hidden, labels, weight


def _loss_and_grad(head_positions: str, hidden, labels, weight):
    hidden = hidden.detach().clone().requires_grad_(True)
    loss, accuracy = MNTPLoss(head_positions)(hidden, labels, weight)
    loss.backward()
    return loss.detach(), accuracy, hidden.grad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_positions_give_the_loss_accuracy_and_gradient_of_every_position(seed):
    hidden, labels, weight = _inputs(seed)
    masked = _loss_and_grad("masked", hidden, labels, weight)
    every = _loss_and_grad("all", hidden, labels, weight)
    torch.testing.assert_close(masked[0], every[0])
    torch.testing.assert_close(masked[1], every[1])
    torch.testing.assert_close(masked[2], every[2])
    assert masked[2].abs().sum() > 0


def test_every_position_without_a_masked_token_gives_zero_with_a_graph():
    hidden = torch.randn(2, 4, 8, requires_grad=True)
    loss, accuracy = MNTPLoss("all")(hidden, torch.full((2, 4), IGNORE), torch.randn(5, 8))
    loss.backward()
    assert loss.item() == 0.0 and accuracy.item() == 0.0 and hidden.grad is not None


def test_unknown_head_positions_is_an_error():
    with pytest.raises(ValueError, match="head_positions must be one of \\['masked', 'all'\\], got 'some'"):
        MNTPLoss("some")
