"""Lightning callbacks: export to a sentence-transformers folder (the hand-off between pipeline stages: a LoRA
adapter is merged on export and the next stage starts a fresh one), exact resume, WiSE-FT, the embeddings of
``lightembed predict`` written to disk, and what TensorBoard shows (throughput, gradient norm, best score)."""

from lightembed.callbacks.export import ExportCallback
from lightembed.callbacks.interpolation import WeightInterpolation
from lightembed.callbacks.monitoring import BestScore, GradientNorm, Throughput
from lightembed.callbacks.prediction import PredictionWriter
from lightembed.callbacks.resume import ResumeCheckpoint

__all__ = [
    "BestScore",
    "ExportCallback",
    "GradientNorm",
    "PredictionWriter",
    "ResumeCheckpoint",
    "Throughput",
    "WeightInterpolation",
]
