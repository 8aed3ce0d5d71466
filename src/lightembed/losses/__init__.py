"""Losses over embeddings: each ``forward(anchor, positive, negative=None, labels=None, ...)`` returns a scalar.

One concept per file: :mod:`.cosent` (CoSENT / AnglE cosine objective), :mod:`.angle` (AnglE angle objective),
:mod:`.in_batch` (InfoNCE with in-batch and hard negatives, duplicate-aware), :mod:`.angle_loss` (AnglE's weighted
sum of the three), :mod:`.mntp` (masked next-token prediction; takes hidden states and the output embedding).
"""

from lightembed.losses.angle import AngleLoss
from lightembed.losses.angle_loss import AnglELoss
from lightembed.losses.cosent import CoSENTLoss
from lightembed.losses.in_batch import InBatchNegativesLoss
from lightembed.losses.mntp import MNTPLoss

__all__ = ["AnglELoss", "AngleLoss", "CoSENTLoss", "InBatchNegativesLoss", "MNTPLoss"]
