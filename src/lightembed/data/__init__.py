"""Data: sources (Hub id or local files), row formats, collators, samplers and data modules.

Layout: :mod:`.sources` (resolve, read, check rows: one layer for in-memory and streamed reading), :mod:`.formats`
(row formats), :mod:`.nli` (NLI labels and conversions), :mod:`.pair_sources` (named training sources),
:mod:`.batches` (batch types and the :class:`~lightembed.data.batches.EvaluationSets` contract), :mod:`.collators`,
:mod:`.samplers`, :mod:`.no_duplicates`, :mod:`.streaming`, :mod:`.token_cache`, :mod:`.sts_sets`, and one module
per data module: :mod:`.pairs`, :mod:`.multi`, :mod:`.corpus`, :mod:`.texts` (texts to embed).
"""

from lightembed.data.corpus import CorpusDataModule
from lightembed.data.multi import MultiDatasetDataModule
from lightembed.data.pair_sources import PairSource, load_pairs
from lightembed.data.pairs import PairDataModule
from lightembed.data.texts import TextDataModule

__all__ = ["CorpusDataModule", "MultiDatasetDataModule", "PairDataModule", "PairSource", "TextDataModule", "load_pairs"]
