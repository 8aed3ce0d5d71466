"""Losses over embeddings: each ``forward(anchor, positive, negative=None, labels=None, ...)`` returns a scalar.

Every loss a stage's ``loss`` option takes subclasses :class:`.base.EmbeddingLoss`. One concept per file:
:mod:`.cosent` (CoSENT, AnglE's cosine term), :mod:`.angle_difference` (AnglE's angle term, sentence-transformers'
``AnglELoss``), :mod:`.in_batch` (InfoNCE with in-batch and hard negatives, duplicate-aware), :mod:`.angle_objective`
(AnglE's weighted sum of the three), :mod:`.mntp` (masked next-token prediction; takes hidden states and the output
embedding).
"""

from __future__ import annotations

import warnings

from lightembed.losses.angle_difference import AngleDifferenceLoss
from lightembed.losses.angle_objective import AnglEObjectiveLoss
from lightembed.losses.base import EmbeddingLoss
from lightembed.losses.cosent import CoSENTLoss
from lightembed.losses.in_batch import InBatchNegativesLoss
from lightembed.losses.mntp import MNTPLoss

__all__ = [
    "AnglEObjectiveLoss",
    "AngleDifferenceLoss",
    "CoSENTLoss",
    "EmbeddingLoss",
    "InBatchNegativesLoss",
    "MNTPLoss",
]

# Old names, kept importable for one release (a YAML `class_path: lightembed.losses.AnglELoss` still resolves). They
# differed by one capital letter, and sentence-transformers' `AnglELoss` is lightembed's angle term alone.
_DEPRECATED = {"AngleLoss": AngleDifferenceLoss, "AnglELoss": AnglEObjectiveLoss}


def __getattr__(name: str) -> type:
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(
            f"lightembed.losses.{name} is deprecated and will be removed in the next release; "
            f"use lightembed.losses.{new.__name__}",
            DeprecationWarning,
            stacklevel=2,
        )
        return new
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
