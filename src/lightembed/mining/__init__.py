"""Hard-negative mining: the exact search (:mod:`~lightembed.mining.search`) and the ``lightembed mine-negatives``
command that writes triplets with their provenance (:mod:`~lightembed.mining.command`)."""

from lightembed.mining.command import PROVENANCE_SUFFIX, build_parser, mine_negatives_main
from lightembed.mining.search import Embedder, MinedNegatives, mine_hard_negatives, random_negatives, top_k_candidates

__all__ = [
    "PROVENANCE_SUFFIX",
    "Embedder",
    "MinedNegatives",
    "build_parser",
    "mine_hard_negatives",
    "mine_negatives_main",
    "random_negatives",
    "top_k_candidates",
]
