"""Masked next-token prediction (MNTP) loss: a masked token at position i is predicted from the output at i - 1."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100
HEAD_POSITIONS = ("masked", "all")


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

    With ``head_positions="masked"`` (the default) only the states at the ``M`` positions before a masked token are
    projected on the vocabulary (``(M, V)`` logits): the other logits do not enter the loss, and with a large
    vocabulary the projection of every position is a large share of a step (about a fifth of positions are masked).
    ``"all"`` projects every position (``(B, L, V)`` logits, then the shifted cross-entropy ignoring unmasked
    positions), as a causal LM head and LLM2Vec's implementation do: the same loss and gradients, kept as the
    reference the masked path is tested and benchmarked against.

    ``forward(hidden (B, L, H), labels (B, L), output_weight (V, H)) -> (loss, accuracy)``, where accuracy is the
    fraction of masked tokens whose arg-max prediction is right.
    """

    def __init__(self, head_positions: Literal["masked", "all"] = "masked") -> None:
        super().__init__()
        if head_positions not in HEAD_POSITIONS:
            raise ValueError(f"head_positions must be one of {list(HEAD_POSITIONS)}, got {head_positions!r}")
        self.head_positions = head_positions

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
        if self.head_positions == "all":
            return self._all_positions(hidden, labels, output_weight)
        states, targets = shifted_masked_positions(hidden, labels)  # (M, H), (M,)
        if targets.numel() == 0:
            zero = hidden.sum() * 0.0  # keeps the graph: a batch without masks contributes nothing
            return zero, zero.detach()
        logits = states @ output_weight.T  # (M, V)
        loss = F.cross_entropy(logits.float(), targets)
        accuracy = (logits.argmax(dim=-1) == targets).float().mean()
        return loss, accuracy

    @staticmethod
    def _all_positions(hidden: Tensor, labels: Tensor, output_weight: Tensor) -> tuple[Tensor, Tensor]:
        logits = (hidden @ output_weight.T)[:, :-1]  # (B, L-1, V): the logits at i-1 ...
        targets = labels[:, 1:]  # (B, L-1): ... predict the token at i
        if not (targets != IGNORE_INDEX).any():
            zero = logits.sum() * 0.0
            return zero, zero.detach()
        flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)  # (B*(L-1), V)
        loss = F.cross_entropy(flat_logits.float(), flat_targets, ignore_index=IGNORE_INDEX)
        selected = flat_targets != IGNORE_INDEX  # (B*(L-1),)
        logits, targets = flat_logits[selected], flat_targets[selected]  # (M, V), (M,)
        accuracy = (logits.argmax(dim=-1) == targets).float().mean()
        return loss, accuracy
