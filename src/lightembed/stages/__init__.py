"""Training stages, one LightningModule each."""

from lightembed.stages.base import EmbeddingModule
from lightembed.stages.contrastive import ContrastiveModule

__all__ = ["ContrastiveModule", "EmbeddingModule"]
