"""ExportCallback: at the end of ``fit``, write the trained encoder as a sentence-transformers folder.

This is also how stages hand off to each other: a LoRA adapter is merged into its full-precision base on export
(:meth:`lightembed.encoder.Encoder.save_pretrained`), the next stage starts from the export folder with a fresh
adapter, and the merged stage's adapter stays in ``export/adapter`` for a stage that wants to continue it
(``LoRASettings.init_from``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightembed.model_card import ModelCardData
from lightembed.stages.base import EmbeddingModule

log = logging.getLogger(__name__)

# training field -> the sentence-transformers prompt name its instruction is saved under (``encode_query`` and
# ``encode_document`` look for "query" and "document")
PROMPT_NAMES = {"anchor": "query", "positive": "document", "negative": "document"}
EVAL_PROMPT = "similarity"  # the validation instruction: the default prompt, as the model was validated with it


def training_prompts(datamodule: Any) -> tuple[dict[str, str], str | None]:
    """The data module's instructions as sentence-transformers prompts: each training field's under
    :data:`PROMPT_NAMES`, the validation one under :data:`EVAL_PROMPT` as the default prompt."""
    prompts: dict[str, str] = {}
    for field, instruction in (getattr(datamodule, "instructions", None) or {}).items():
        if instruction and field in PROMPT_NAMES:
            prompts.setdefault(PROMPT_NAMES[field], instruction)
    eval_instruction = getattr(datamodule, "eval_instruction", None)
    if eval_instruction:
        prompts[EVAL_PROMPT] = eval_instruction
    return prompts, EVAL_PROMPT if eval_instruction else None


def training_sources(datamodule: Any) -> list[str]:
    """The training sources a data module reads (``train_source`` or named ``train_sources``), with their format."""
    fmt = getattr(datamodule, "train_format", None)
    single = getattr(datamodule, "train_source", None)
    if single:
        return [f"{single} ({fmt})" if fmt else str(single)]
    named = getattr(datamodule, "train_sources", None) or {}
    described = []
    for name, spec in named.items():
        source, spec_format = getattr(spec, "source", spec), getattr(spec, "format", None)
        described.append(f"{name}: {source}" + (f" ({spec_format})" if spec_format else ""))
    return described


def model_card_data(trainer: L.Trainer, stage: EmbeddingModule) -> ModelCardData:
    """What the run knows for the model card: the stage's loss and optimizer, the data, the best validation score."""
    summary = stage.training_summary()
    loss_settings = {k.removeprefix("loss."): v for k, v in summary.items() if k.startswith("loss.")}
    training = {k: v for k, v in summary.items() if k.startswith("optimizer")}
    training.update(warmup_ratio=stage.hparams.get("warmup_ratio"), scheduler=stage.hparams.get("scheduler"))
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and hasattr(datamodule, "batch_size"):
        training["batch_size"] = datamodule.batch_size
    scores: dict[str, float] = {}
    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_score", None)
    if best is not None and getattr(checkpoint, "monitor", None):
        scores[f"best {checkpoint.monitor}"] = float(best)
    for name, value in sorted(trainer.callback_metrics.items()):
        if name.startswith(("val/", "test/")):
            scores[f"last {name}"] = float(value)
    return ModelCardData(
        loss=summary.get("loss", ""),
        loss_settings=loss_settings,
        datasets=training_sources(datamodule),
        scores=scores,
        stage=type(stage).__name__,
        training_settings={k: v for k, v in training.items() if v is not None},
    )


class ExportCallback(L.Callback):
    """At the end of ``fit``, export the best checkpoint's weights (or the last ones) as a sentence-transformers folder.

    The folder loads with ``SentenceTransformer(folder)`` and ``Encoder.from_pretrained(folder)``, and is a plain
    Hugging Face model folder a next stage can start from. It holds a model card (``README.md``: base model, loss,
    data, scores) and the data module's instructions as sentence-transformers prompts.

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
            encoder = pl_module.encoder
            encoder.prompts, encoder.default_prompt_name = training_prompts(getattr(trainer, "datamodule", None))
            card = model_card_data(trainer, pl_module)
            folder = encoder.save_pretrained(self.folder or Path(run_dir) / "export", card=card)
            log.info("export: wrote sentence-transformers folder %s", folder)
        trainer.strategy.barrier()
