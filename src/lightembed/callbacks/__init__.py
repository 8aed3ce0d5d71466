"""Lightning callbacks: export to a sentence-transformers folder, LoRA hand-off between stages, WiSE-FT."""

from lightembed.callbacks.export import ExportCallback, export_sentence_transformers
from lightembed.callbacks.interpolation import WeightInterpolation
from lightembed.callbacks.lora_handoff import LoRAHandoff

__all__ = ["ExportCallback", "LoRAHandoff", "WeightInterpolation", "export_sentence_transformers"]
