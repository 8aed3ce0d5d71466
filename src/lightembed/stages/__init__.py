"""Training stages, one LightningModule each."""

from lightembed.encoder import EncoderSettings
from lightembed.stages.base import EmbeddingModule
from lightembed.stages.contrastive import ContrastiveModule
from lightembed.stages.distill import DistillationModule
from lightembed.stages.mntp import MNTPModule
from lightembed.stages.simcse import SimCSEModule
from lightembed.stages.token_deletion import ProxySettings, TokenDeletionModule

__all__ = [
    "ContrastiveModule",
    "DistillationModule",
    "EmbeddingModule",
    "EncoderSettings",
    "MNTPModule",
    "ProxySettings",
    "SimCSEModule",
    "TokenDeletionModule",
]
