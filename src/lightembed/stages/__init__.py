"""Training stages, one LightningModule each."""

from lightembed.stages.base import EmbeddingModule
from lightembed.stages.contrastive import ContrastiveModule
from lightembed.stages.mntp import MNTPModule
from lightembed.stages.simcse import SimCSEModule

__all__ = ["ContrastiveModule", "EmbeddingModule", "MNTPModule", "SimCSEModule"]
