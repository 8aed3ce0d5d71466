"""Data: sources (Hub id or local files), NLI conversion, collators, samplers and data modules."""

from lightembed.data.corpus import CorpusDataModule
from lightembed.data.pairs import PairDataModule

__all__ = ["CorpusDataModule", "PairDataModule"]
