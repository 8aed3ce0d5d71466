"""Lightning callbacks: export, and (later) LoRA hand-off between stages."""

from lightembed.callbacks.export import ExportCallback, export_sentence_transformers

__all__ = ["ExportCallback", "export_sentence_transformers"]
