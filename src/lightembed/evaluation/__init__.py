"""Evaluators shared by stages, the CLI, the training callback and notebooks.

* :mod:`~lightembed.evaluation.sts`: cosine Spearman/Pearson on STS sets (and the 7-task "all" setting).
* :mod:`~lightembed.evaluation.classification`: SentEval-style classifiers on frozen embeddings.
* :mod:`~lightembed.evaluation.clustering`: KMeans + v-measure.
* :mod:`~lightembed.evaluation.retrieval`: nDCG/MRR/Recall/MAP/Precision@k with exact chunked (or faiss) top-k;
  :mod:`~lightembed.evaluation.reranking`: MAP and MRR@10 of candidate lists;
  :mod:`~lightembed.evaluation.retrieval_data`: BEIR folders and query/positive files.
* :mod:`~lightembed.evaluation.report`: suites, the JSON report with provenance, markdown tables.
* :mod:`~lightembed.evaluation.mteb`: adapter for the optional ``mteb`` package.
* :mod:`~lightembed.evaluation.analysis`: LLM2Vec analyses (causal vs bidirectional states, shared-prefix test).
* :mod:`~lightembed.evaluation.plots`: PCA pictures of class separation and plots of the analyses (matplotlib).
"""

from lightembed.evaluation.classification import (
    ClassificationResult,
    evaluate_classification,
    format_classification_table,
)
from lightembed.evaluation.clustering import ClusteringResult, evaluate_clustering, format_clustering_table
from lightembed.evaluation.encoding import EncodeCache
from lightembed.evaluation.report import build_report, format_report, run_suite
from lightembed.evaluation.reranking import RerankingResult, RerankingSample, evaluate_reranking
from lightembed.evaluation.retrieval import RetrievalResult, RetrievalTask, evaluate_retrieval
from lightembed.evaluation.retrieval_data import load_beir, load_reranking, load_retrieval
from lightembed.evaluation.sts import STSResult, evaluate_sts, format_table

__all__ = [
    "ClassificationResult",
    "ClusteringResult",
    "EncodeCache",
    "RerankingResult",
    "RerankingSample",
    "RetrievalResult",
    "RetrievalTask",
    "STSResult",
    "build_report",
    "evaluate_classification",
    "evaluate_clustering",
    "evaluate_reranking",
    "evaluate_retrieval",
    "evaluate_sts",
    "format_classification_table",
    "format_clustering_table",
    "format_report",
    "format_table",
    "load_beir",
    "load_reranking",
    "load_retrieval",
    "run_suite",
]
