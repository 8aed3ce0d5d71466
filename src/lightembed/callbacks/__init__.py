"""Lightning callbacks: export to a sentence-transformers folder, LoRA hand-off between stages."""

from lightembed.callbacks.export import ExportCallback, export_sentence_transformers
from lightembed.callbacks.lora_handoff import LoRAHandoff

__all__ = ["ExportCallback", "LoRAHandoff", "export_sentence_transformers"]
