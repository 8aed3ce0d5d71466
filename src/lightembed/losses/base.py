"""The base class of every loss a stage's ``loss`` option accepts.

A stage types its ``loss`` parameter with :class:`EmbeddingLoss` rather than ``nn.Module``: the stage can only call
a loss that takes embeddings, and LightningCLI's ``--model.help`` then lists lightembed's losses (and any user
subclass) instead of every ``nn.Module`` in torch and transformers.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn


class EmbeddingLoss(nn.Module):
    """A loss over embeddings: ``forward(anchor, positive, negative=None, labels=None, ...) -> scalar Tensor``.

    Inputs: ``anchor`` and ``positive`` ``(B, H)``, ``negative`` ``(B, H)`` or ``None``, ``labels`` ``(B,)`` (a
    score per pair) or ``None``; a loss may take further keyword arguments the stages pass (``anchor_ids``,
    ``positive_ids``, ``negative_ids``: ``(B,)`` ids marking identical texts). The stage encodes and pools; the loss
    sees embeddings only, so its math is testable alone and GradCache or cross-device gathering can wrap it.

    A custom loss for a stage's ``loss`` option subclasses this class (``class_path: my_package.MyLoss``).

    A loss runs with autocast off: under bf16 mixed precision autocast would run every similarity matmul in bf16
    (8 bits of mantissa), even on float32 embeddings, and a cosine of 0.9 divided by a temperature of 0.05 would then
    carry an error near 0.1 in its logit. The loss's matrices are ``B x B``, so float32 costs nothing next to the
    backbone. Embeddings that arrive in bf16 (bf16-true training) are promoted by the losses themselves.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        tensors = [x for x in (*args, *kwargs.values()) if isinstance(x, Tensor)]
        with contextlib.ExitStack() as stack:
            for device_type in sorted({x.device.type for x in tensors} | {"cpu"}):
                if torch.amp.is_autocast_available(device_type):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            return super().__call__(*args, **kwargs)
