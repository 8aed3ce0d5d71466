"""Python API: load any trained or pretrained encoder and embed text.

>>> from lightembed import Encoder
>>> encoder = Encoder.from_pretrained("packaged:all-MiniLM-L6-v2")
>>> encoder.encode(["a sentence", "another one"]).shape
torch.Size([2, 384])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightembed.encoder import Encoder


def load_encoder(
    model: str,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    truncate_dim: int | None = None,
    layers: int | None = None,
    bidirectional: bool | None = None,
) -> Encoder:
    """:meth:`Encoder.from_pretrained`: a Hub id, a local folder, a ``packaged:`` name or a stage's ``.ckpt``."""
    return Encoder.from_pretrained(
        model,
        pooling=pooling,
        normalize=normalize,
        max_length=max_length,
        device=device,
        truncate_dim=truncate_dim,
        layers=layers,
        bidirectional=bidirectional,
    )


def encode(model: str | Encoder, texts: Sequence[str], batch_size: int = 64) -> Tensor:
    """Embed ``texts`` with ``model`` (a name accepted by :func:`load_encoder`, or an encoder): ``(N, H)``."""
    encoder = load_encoder(model) if isinstance(model, str) else model
    return encoder.encode(texts, batch_size=batch_size)
