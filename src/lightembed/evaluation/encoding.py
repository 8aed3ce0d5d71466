"""One way for every evaluator to turn texts into embeddings: any object with ``encode(texts)``, cached per text.

Evaluators accept either a lightembed :class:`~lightembed.encoder.Encoder` (or a stage) (its ``encode`` sorts texts by
length, runs under ``inference_mode`` and takes ``precision="bfloat16"``) or any *duck-typed* encoder with
``encode(sentences, **kwargs) -> array`` (a ``SentenceTransformer``, an MTEB model, a function wrapped in a class).
:class:`EncodeCache` wraps either so that a suite run encodes each distinct text once, whichever evaluators ask for it,
and records how many texts it encoded and how long that took.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from lightembed.encoder import TextEncoder


@runtime_checkable
class Embedder(Protocol):
    """Anything that embeds a list of texts: ``encode(texts) -> (N, H)`` array or tensor."""

    def encode(self, sentences: Sequence[str], **kwargs: Any) -> Any: ...


def to_numpy(embeddings: Any) -> np.ndarray:
    """``(N, H)`` tensor / array / list -> float32 numpy array."""
    if isinstance(embeddings, torch.Tensor):
        return embeddings.detach().float().cpu().numpy()
    return np.asarray(embeddings, dtype=np.float32)


class EncodeCache:
    """Embed texts with ``encoder`` and keep every embedding, so each distinct text is encoded once.

    Args:
        encoder: an :class:`~lightembed.encoder.Encoder` or any object with ``encode(texts)``.
        batch_size: texts per forward pass (passed to lightembed modules only).
        precision: ``float32`` or ``bfloat16`` (lightembed modules only; others encode as they do).
        instruction: prefix for every text, excluded from pooling (lightembed modules only).

    Attributes:
        encoded: how many texts were actually encoded (cache misses).
        seconds: wall time spent in the encoder.
    """

    def __init__(
        self,
        encoder: TextEncoder | Embedder,
        batch_size: int = 64,
        precision: str = "float32",
        instruction: str | None = None,
    ) -> None:
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"unknown precision {precision!r} (option `precision`); choose float32 or bfloat16")
        if not hasattr(encoder, "encode"):
            raise TypeError(f"{type(encoder).__name__} has no encode(texts) method; it cannot be evaluated")
        self.encoder = encoder
        self.batch_size = batch_size
        self.precision = precision
        self.instruction = instruction
        self.encoded = 0
        self.seconds = 0.0
        self._store: dict[str, np.ndarray] = {}

    def _encode_new(self, texts: list[str]) -> np.ndarray:
        start = time.perf_counter()
        if isinstance(self.encoder, TextEncoder):
            out = self.encoder.encode(
                texts, batch_size=self.batch_size, precision=self.precision, instruction=self.instruction
            )
        else:
            out = self.encoder.encode(texts)
        self.seconds += time.perf_counter() - start
        self.encoded += len(texts)
        array = to_numpy(out)
        if array.ndim != 2 or array.shape[0] != len(texts):
            raise ValueError(
                f"{type(self.encoder).__name__}.encode returned shape {array.shape} for {len(texts)} texts; "
                "expected (N, H)"
            )
        return array

    def encode(self, sentences: Sequence[str], **kwargs: Any) -> np.ndarray:
        """``N`` texts -> ``(N, H)`` float32 array in input order; only texts not seen before reach the encoder."""
        texts = list(sentences)
        for i, text in enumerate(texts):
            if not isinstance(text, str):  # empty strings are embedded, as sentence-transformers does
                raise ValueError(f"encode: text #{i} is not a string: {text!r}")
        new = [t for t in dict.fromkeys(texts) if t not in self._store]
        if new:
            for text, vector in zip(new, self._encode_new(new), strict=True):
                self._store[text] = vector
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._store[t] for t in texts])

    @property
    def sentences_per_second(self) -> float | None:
        return self.encoded / self.seconds if self.seconds > 0 else None

    def clear(self) -> None:
        """Forget the stored embeddings (e.g. after the weights changed during training)."""
        self._store.clear()


def as_cache(
    encoder: TextEncoder | Embedder | EncodeCache,
    batch_size: int = 64,
    precision: str = "float32",
    instruction: str | None = None,
) -> EncodeCache:
    """``encoder`` itself when it is an :class:`EncodeCache` already, else a new cache around it."""
    if isinstance(encoder, EncodeCache):
        return encoder
    return EncodeCache(encoder, batch_size=batch_size, precision=precision, instruction=instruction)
