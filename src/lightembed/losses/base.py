"""The base class of every loss a stage's ``loss`` option accepts.

A stage types its ``loss`` parameter with :class:`EmbeddingLoss` rather than ``nn.Module``: the stage can only call
a loss that takes embeddings, and LightningCLI's ``--model.help`` then lists lightembed's losses (and any user
subclass) instead of every ``nn.Module`` in torch and transformers.
"""

from __future__ import annotations

from torch import nn


class EmbeddingLoss(nn.Module):
    """A loss over embeddings: ``forward(anchor, positive, negative=None, labels=None, ...) -> scalar Tensor``.

    Inputs: ``anchor`` and ``positive`` ``(B, H)``, ``negative`` ``(B, H)`` or ``None``, ``labels`` ``(B,)`` (a
    score per pair) or ``None``; a loss may take further keyword arguments the stages pass (``anchor_ids``,
    ``positive_ids``, ``negative_ids``: ``(B,)`` ids marking identical texts). The stage encodes and pools; the loss
    sees embeddings only, so its math is testable alone and GradCache or cross-device gathering can wrap it.

    A custom loss for a stage's ``loss`` option subclasses this class (``class_path: my_package.MyLoss``).
    """
