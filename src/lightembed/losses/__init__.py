"""Losses over embeddings: each ``forward(anchor, positive, negative=None, labels=None, ...)`` returns a scalar.

Every loss a stage's ``loss`` option takes subclasses :class:`.base.EmbeddingLoss`. One concept per file:
:mod:`.cosent` (CoSENT, AnglE's cosine term), :mod:`.angle_difference` (AnglE's angle term, sentence-transformers'
``AnglELoss``), :mod:`.in_batch` (InfoNCE with in-batch and hard negatives, duplicate-aware), :mod:`.angle_objective`
(AnglE's weighted sum of the three), :mod:`.mntp` (masked next-token prediction; takes hidden states and the output
embedding), :mod:`.matryoshka` (any of them summed over embedding prefixes), and the classic table: :mod:`.contrastive`
(contrastive and online contrastive on 0/1 pairs), :mod:`.cosine_similarity`, :mod:`.softmax` (Sentence-BERT's
classifier, a head owned by the loss), :mod:`.triplet`, :mod:`.batch_triplet` (batch-hard, semi-hard, all and
soft-margin on (text, label) batches), :mod:`.mega_batch_margin`, :mod:`.gist` (GISTEmbed, guide embeddings as inputs),
:mod:`.matryoshka_2d` (over layers and prefixes) and :mod:`.distillation` (MSE to a teacher's embeddings, MarginMSE).
"""

from __future__ import annotations

import warnings

from lightembed.losses.angle_difference import AngleDifferenceLoss
from lightembed.losses.angle_objective import AnglEObjectiveLoss
from lightembed.losses.base import EmbeddingLoss
from lightembed.losses.batch_triplet import (
    BatchAllTripletLoss,
    BatchHardSoftMarginTripletLoss,
    BatchHardTripletLoss,
    BatchSemiHardTripletLoss,
)
from lightembed.losses.contrastive import ContrastiveLoss, OnlineContrastiveLoss
from lightembed.losses.cosent import CoSENTLoss
from lightembed.losses.cosine_similarity import CosineSimilarityLoss
from lightembed.losses.distillation import EmbeddingMSELoss, MarginMSELoss
from lightembed.losses.gist import GISTEmbedLoss
from lightembed.losses.in_batch import InBatchNegativesLoss
from lightembed.losses.matryoshka import MatryoshkaLoss
from lightembed.losses.matryoshka_2d import Matryoshka2dLoss
from lightembed.losses.mega_batch_margin import MegaBatchMarginLoss
from lightembed.losses.mntp import MNTPLoss
from lightembed.losses.softmax import SoftmaxLoss
from lightembed.losses.triplet import TripletLoss

__all__ = [
    "AnglEObjectiveLoss",
    "AngleDifferenceLoss",
    "BatchAllTripletLoss",
    "BatchHardSoftMarginTripletLoss",
    "BatchHardTripletLoss",
    "BatchSemiHardTripletLoss",
    "CoSENTLoss",
    "ContrastiveLoss",
    "CosineSimilarityLoss",
    "EmbeddingLoss",
    "EmbeddingMSELoss",
    "GISTEmbedLoss",
    "InBatchNegativesLoss",
    "MNTPLoss",
    "MarginMSELoss",
    "Matryoshka2dLoss",
    "MatryoshkaLoss",
    "MegaBatchMarginLoss",
    "OnlineContrastiveLoss",
    "SoftmaxLoss",
    "TripletLoss",
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
