"""MNTPLoss against a naive per-position loop: the token at i is predicted from the output at i - 1."""

import pytest
import torch

from lightembed.losses import MNTPLoss

IGNORE = -100


def naive_mntp(hidden, labels, weight):
    losses, correct = [], []
    for b in range(labels.shape[0]):
        for i in range(1, labels.shape[1]):
            if labels[b, i] != IGNORE:
                logits = hidden[b, i - 1] @ weight.T
                losses.append(-torch.log_softmax(logits, dim=-1)[labels[b, i]])
                correct.append(float(logits.argmax() == labels[b, i]))
    return torch.stack(losses).mean(), sum(correct) / len(correct)


def test_matches_the_naive_loop():
    torch.manual_seed(0)
    hidden, weight = torch.randn(3, 7, 8), torch.randn(11, 8)
    labels = torch.full((3, 7), IGNORE)
    labels[0, 2], labels[1, 1], labels[1, 6], labels[2, 4] = 3, 5, 10, 0
    loss, accuracy = MNTPLoss()(hidden, labels, weight)
    expected_loss, expected_accuracy = naive_mntp(hidden, labels, weight)
    torch.testing.assert_close(loss, expected_loss)
    assert accuracy.item() == pytest.approx(expected_accuracy)


def test_uses_the_previous_position_not_the_same_one():
    hidden = torch.zeros(1, 3, 2)
    hidden[0, 0] = torch.tensor([10.0, 0.0])  # position 0 strongly predicts token 0
    hidden[0, 1] = torch.tensor([0.0, 10.0])  # position 1 strongly predicts token 1
    weight = torch.eye(2)
    labels = torch.tensor([[IGNORE, 0, IGNORE]])  # the token at position 1 is 0: read from position 0
    loss, accuracy = MNTPLoss()(hidden, labels, weight)
    assert loss.item() < 1e-3 and accuracy.item() == 1.0


def test_no_masked_token_gives_zero_with_a_graph():
    hidden = torch.randn(2, 4, 8, requires_grad=True)
    loss, _ = MNTPLoss()(hidden, torch.full((2, 4), IGNORE), torch.randn(5, 8))
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad is not None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="labels"):
        MNTPLoss()(torch.randn(2, 4, 8), torch.zeros(2, 5, dtype=torch.long), torch.randn(5, 8))
