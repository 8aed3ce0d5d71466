"""ExportCallback: at the end of ``fit``, write the trained encoder as a sentence-transformers folder.

This is also how stages hand off to each other: a LoRA adapter is merged into its full-precision base on export
(:meth:`lightembed.encoder.Encoder.save_pretrained`), the next stage starts from the export folder with a fresh
adapter, and the merged stage's adapter stays in ``export/adapter`` for a stage that wants to continue it
(``LoRASettings.init_from``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from lightembed.stages.base import EmbeddingModule

log = logging.getLogger(__name__)


class ExportCallback(L.Callback):
    """At the end of ``fit``, export the best checkpoint's weights (or the last ones) as a sentence-transformers folder.

    The folder loads with ``SentenceTransformer(folder)`` and ``Encoder.from_pretrained(folder)``, and is a plain
    Hugging Face model folder a next stage can start from.

    Args:
        folder: where to write; ``None`` means ``<run folder>/export`` (the logger's version folder).
        use_best: load the best checkpoint of the trainer's ``ModelCheckpoint`` first, when there is one.
    """

    def __init__(self, folder: str | None = None, use_best: bool = True) -> None:
        self.folder = folder
        self.use_best = use_best

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, EmbeddingModule):
            raise TypeError(
                f"ExportCallback needs a lightembed stage (EmbeddingModule), got {type(pl_module).__name__}"
            )
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.use_best else ""
        if best:
            checkpoint = torch.load(best, map_location=pl_module.device, weights_only=False)
            pl_module.on_load_checkpoint(checkpoint)  # refills the frozen base of an adapter-only checkpoint
            pl_module.load_state_dict(checkpoint["state_dict"])
            log.info("export: loaded best checkpoint %s", best)
        run_dir = trainer.log_dir or trainer.default_root_dir  # on every rank: log_dir is a collective call
        if trainer.is_global_zero:
            folder = pl_module.encoder.save_pretrained(self.folder or Path(run_dir) / "export")
            log.info("export: wrote sentence-transformers folder %s", folder)
        trainer.strategy.barrier()
