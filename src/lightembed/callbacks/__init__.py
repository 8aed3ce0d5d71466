"""Lightning callbacks: export to a sentence-transformers folder (the hand-off between pipeline stages: a LoRA
adapter is merged on export and the next stage starts a fresh one), exact resume, WiSE-FT."""

from lightembed.callbacks.export import ExportCallback
from lightembed.callbacks.interpolation import WeightInterpolation
from lightembed.callbacks.resume import ResumeCheckpoint

__all__ = ["ExportCallback", "ResumeCheckpoint", "WeightInterpolation"]
