"""Export a trained encoder as a sentence-transformers folder (loads offline with ``SentenceTransformer(folder)``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
from peft import PeftModel
from torch import nn

from lightembed.lora import merge_into_base, save_adapter
from lightembed.stages.base import EmbeddingModule

log = logging.getLogger(__name__)

# lightembed pooling name -> the sentence-transformers Pooling config key that selects it.
ST_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "weighted_mean": "pooling_mode_weightedmean_tokens",
    "last_token": "pooling_mode_lasttoken",
}
SETTINGS_FILE = "lightembed.json"


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def merged_backbone(module: EmbeddingModule, adapter_folder: str | Path) -> nn.Module:
    """The module's backbone as a plain model: a LoRA/QLoRA adapter is saved to ``adapter_folder`` and merged into
    the full-precision base reloaded from disk (:func:`lightembed.lora.merge_into_base`); other backbones as they are.
    """
    backbone = module.backbone
    if not isinstance(backbone, PeftModel):
        return backbone
    save_adapter(backbone, adapter_folder)
    base = backbone.peft_config[backbone.active_adapter].base_model_name_or_path
    return merge_into_base(base, adapter_folder, bidirectional=module.hparams.get("bidirectional"))


def export_sentence_transformers(module: EmbeddingModule, folder: str | Path) -> Path:
    """Write ``module`` as a sentence-transformers folder: HF weights + tokenizer, pooling, optional normalisation.

    A LoRA backbone is exported merged (its adapter is kept in ``<folder>/adapter`` for a next stage's
    ``LoRASettings.init_from``). The folder also carries ``lightembed.json`` (pooling, normalize, max_length) so
    lightembed reloads it with the same settings, and is a plain HF model folder a next stage can start from.
    Returns the folder.
    """
    folder = Path(folder)
    module.configure_model()
    folder.mkdir(parents=True, exist_ok=True)
    merged_backbone(module, folder / "adapter").save_pretrained(folder)
    module.tokenizer.save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if module.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    _write_json(folder / "modules.json", modules)
    pooling = {key: name == module.pooling for name, key in ST_POOLING_KEYS.items()}
    _write_json(
        folder / "1_Pooling" / "config.json",
        {"word_embedding_dimension": module.embedding_dim, **pooling, "pooling_mode_mean_sqrt_len_tokens": False},
    )
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": module.max_length, "do_lower_case": False})
    _write_json(folder / "config_sentence_transformers.json", {"similarity_fn_name": "cosine"})
    _write_json(
        folder / SETTINGS_FILE,
        {"pooling": module.pooling, "normalize": module.normalize, "max_length": module.max_length},
    )
    return folder


class ExportCallback(L.Callback):
    """At the end of ``fit``, export the best checkpoint's weights (or the last ones) as a sentence-transformers folder.

    Args:
        folder: where to write; ``None`` means ``<run folder>/export`` (the logger's version folder).
        use_best: load the best checkpoint of the trainer's ``ModelCheckpoint`` first, when there is one.
    """

    def __init__(self, folder: str | None = None, use_best: bool = True) -> None:
        self.folder = folder
        self.use_best = use_best

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, EmbeddingModule):
            raise TypeError(f"ExportCallback needs an EmbeddingModule, got {type(pl_module).__name__}")
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.use_best else ""
        if best:
            checkpoint = torch.load(best, map_location=pl_module.device, weights_only=False)
            pl_module.on_load_checkpoint(checkpoint)  # refills the frozen base of an adapter-only checkpoint
            pl_module.load_state_dict(checkpoint["state_dict"])
            log.info("export: loaded best checkpoint %s", best)
        run_dir = trainer.log_dir or trainer.default_root_dir  # on every rank: log_dir is a collective call
        if trainer.is_global_zero:
            folder = export_sentence_transformers(pl_module, self.folder or Path(run_dir) / "export")
            log.info("export: wrote sentence-transformers folder %s", folder)
        trainer.strategy.barrier()
