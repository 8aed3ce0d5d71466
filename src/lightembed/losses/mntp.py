"""Masked next-token prediction (MNTP) loss: a masked token at position i is predicted from the output at i - 1."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100


def shifted_masked_positions(hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Pair each masked token with the hidden state that predicts it.

    Args:
        hidden: ``(B, L, H)`` final hidden states.
        labels: ``(B, L)`` original ids at masked positions, ``-100`` elsewhere.

    Returns:
        ``states (M, H)`` = ``hidden[b, i - 1]`` and ``targets (M,)`` = ``labels[b, i]`` for the ``M`` masked
        positions ``i >= 1`` (position 0 has no predecessor and is never masked by the collator).
    """
    predictors = hidden[:, :-1]  # (B, L-1, H): the state at i-1 ...
    targets = labels[:, 1:]  # (B, L-1): ... predicts the token at i
    selected = targets != IGNORE_INDEX  # (B, L-1)
    return predictors[selected], targets[selected]  # (M, H), (M,)


class MNTPLoss(nn.Module):
    """Cross-entropy of masked next-token prediction ("LLM2Vec: Large Language Models Are Secretly Powerful Text
    Encoders", Parishad BehnamGhader, Vaibhav Adlakha, Marius Mosbach, Dzmitry Bahdanau, Nicolas Chapados and Siva
    Reddy, 2024, arXiv 2404.05961).

    A decoder made bidirectional sees the whole masked sequence; as in its causal pre-training, the token at position
    ``i`` is read from the logits at ``i - 1``::

        loss = mean_{(b, i): labels[b, i] != -100} CE(h[b, i-1] @ W_out^T, labels[b, i])

    Only the ``M`` masked positions are projected on the vocabulary (``(M, V)`` logits, not ``(B, L, V)``).

    ``forward(hidden (B, L, H), labels (B, L), output_weight (V, H)) -> (loss, accuracy)``, where accuracy is the
    fraction of masked tokens whose arg-max prediction is right.
    """

    def forward(self, hidden: Tensor, labels: Tensor, output_weight: Tensor) -> tuple[Tensor, Tensor]:
        """Compute the loss and the masked-token accuracy.

        Args:
            hidden: ``(B, L, H)`` final hidden states of the bidirectional decoder.
            labels: ``(B, L)`` original token ids at masked positions, ``-100`` elsewhere.
            output_weight: ``(V, H)`` the output (LM head) embedding matrix.

        Returns:
            ``(loss, accuracy)``, two scalar tensors; both 0 (the loss still with a grad_fn) without masked tokens.
        """
        if hidden.shape[:2] != labels.shape:
            raise ValueError(f"hidden (B, L, H) {tuple(hidden.shape)} and labels (B, L) {tuple(labels.shape)} differ")
        states, targets = shifted_masked_positions(hidden, labels)  # (M, H), (M,)
        if targets.numel() == 0:
            zero = hidden.sum() * 0.0  # keeps the graph: a batch without masks contributes nothing
            return zero, zero.detach()
        logits = states @ output_weight.T  # (M, V)
        loss = F.cross_entropy(logits.float(), targets)
        accuracy = (logits.argmax(dim=-1) == targets).float().mean()
        return loss, accuracy
