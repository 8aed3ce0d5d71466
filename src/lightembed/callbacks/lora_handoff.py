"""Hand a LoRA-trained backbone to the next stage: save the adapter, merge it into the full-precision base, mark done.

Folder layout written at the end of ``fit``::

    <folder>/adapter/       adapter_config.json + adapter_model.safetensors  (next stage: LoRASettings.init_from)
    <folder>/merged/        config.json + model.safetensors + tokenizer       (next stage: ``model``)
    <folder>/handoff.json   written last and atomically: its presence means the hand-off is complete

The merge always reloads the base from disk (:func:`lightembed.lora.merge_into_base`): a QLoRA run merges into the
fp32 base, not into its 4-bit copy, and the training model in memory is left untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel

from lightembed.backbones import DTYPES
from lightembed.lora import is_quantized, merge_into_base, save_adapter, settings_of

log = logging.getLogger(__name__)

HANDOFF_FILE = "handoff.json"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
FORMAT_VERSION = 1


def read_handoff(folder: str | Path) -> dict[str, Any]:
    """The record of a complete hand-off; an interrupted one (no ``handoff.json``) raises ``FileNotFoundError``."""
    path = Path(folder) / HANDOFF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no complete LoRA hand-off in {str(folder)!r}: {HANDOFF_FILE} is missing")
    return json.loads(path.read_text())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_fresh(target: Path, write: Callable[[Path], object]) -> None:
    """Write a folder beside ``target`` and swap it in, so ``target`` never mixes old and new files."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _bidirectional(model: PreTrainedModel) -> bool | None:
    """``True`` when a decoder was switched to bidirectional attention (``config.is_causal = False``), else ``None``."""
    return True if getattr(model.config, "is_causal", None) is False else None


def _check_only_adapter_trained(model: PeftModel) -> None:
    """The merge reloads the base from disk, so base weights changed in memory would be lost: refuse them."""
    stray = [
        name
        for name, param in model.named_parameters()
        if param.requires_grad and "lora_" not in name and "modules_to_save" not in name
    ]
    if stray:
        raise ValueError(f"LoRA hand-off: base weights are trainable and would be lost by the merge: {stray[:5]}")


def _check_merged_layer(adapted: PeftModel, merged: PreTrainedModel) -> None:
    """Compare one merged layer with the in-memory ``W + B @ A * scale`` (full-precision bases only)."""
    name, layer = next((n, m) for n, m in adapted.named_modules() if isinstance(m, LoraLayer))
    expected = layer.get_base_layer().weight.detach().float().cpu()
    expected = expected + layer.get_delta_weight(adapted.active_adapter).detach().float().cpu()
    actual = merged.get_submodule(name.removeprefix("base_model.model.")).weight.detach().float()
    tolerance = 1e-5 if min(actual.dtype.itemsize, layer.get_base_layer().weight.dtype.itemsize) >= 4 else 1e-2
    if not torch.allclose(actual, expected, rtol=tolerance, atol=tolerance):
        raise RuntimeError(
            f"LoRA hand-off: the merged {name} differs from the trained W + B@A*scale; "
            "was the base model on disk changed during training?"
        )


def write_handoff(
    backbone: nn.Module,
    folder: str | Path,
    tokenizer: Any = None,
    dtype: str = "float32",
    global_step: int | None = None,
) -> Path:
    """Save ``backbone``'s adapter, the merged model (+ tokenizer) and, last, ``handoff.json``; returns the folder.

    A backbone without an adapter (full fine-tuning) is saved as is in ``merged/`` with ``"adapter": null``.

    Args:
        backbone: a ``peft.PeftModel`` (LoRA or QLoRA) or a plain ``PreTrainedModel``.
        folder: the hand-off folder; an older ``handoff.json`` there is removed first.
        tokenizer: saved into ``merged/`` so the folder loads as a complete model.
        dtype: weight dtype of the merged model (LoRA only; a plain backbone keeps its own).
        global_step: recorded in ``handoff.json``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / HANDOFF_FILE).unlink(missing_ok=True)  # from here on the folder does not look finished
    record: dict[str, Any] = {"format": FORMAT_VERSION, "global_step": global_step}
    if isinstance(backbone, PeftModel):
        _check_only_adapter_trained(backbone)
        base_name = backbone.peft_config[backbone.active_adapter].base_model_name_or_path
        if not base_name:
            raise ValueError("LoRA hand-off: the adapter does not record its base model (base_model_name_or_path)")
        quantized = is_quantized(backbone)
        bidirectional = _bidirectional(backbone.get_base_model())
        _write_fresh(folder / ADAPTER_DIR, lambda tmp: save_adapter(backbone, tmp))
        merged = merge_into_base(base_name, folder / ADAPTER_DIR, dtype=dtype, bidirectional=bidirectional)
        if not quantized:
            _check_merged_layer(backbone, merged)
        lora = asdict(settings_of(backbone))
        del lora["init_from"]
        record.update(base_model=base_name, adapter=ADAPTER_DIR, lora=lora, quantized=quantized)
    else:
        if not isinstance(backbone, PreTrainedModel):
            raise TypeError(f"LoRA hand-off needs a PeftModel or PreTrainedModel, got {type(backbone).__name__}")
        merged, bidirectional = backbone, _bidirectional(backbone)
        shutil.rmtree(folder / ADAPTER_DIR, ignore_errors=True)
        record.update(base_model=backbone.name_or_path, adapter=None, lora=None, quantized=False)

    def save_merged(tmp: Path) -> None:
        merged.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    if tokenizer is None:
        log.warning("LoRA hand-off: no tokenizer given, %s/%s holds weights only", folder, MERGED_DIR)
    _write_fresh(folder / MERGED_DIR, save_merged)
    weights = sorted((folder / MERGED_DIR).glob("*.safetensors"))
    if not weights:
        raise RuntimeError(f"LoRA hand-off: save_pretrained wrote no safetensors file in {folder / MERGED_DIR}")
    record.update(
        merged=True,
        merged_model=MERGED_DIR,
        dtype=str(next(merged.parameters()).dtype).removeprefix("torch."),
        bidirectional=bidirectional,
        weights_sha256={path.name: _sha256(path) for path in weights},
    )
    partial = folder / f".{HANDOFF_FILE}.partial"
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, folder / HANDOFF_FILE)  # atomic: the hand-off is complete from this line on
    log.info("LoRA hand-off written to %s (adapter: %s, merged model: %s)", folder, record["adapter"], MERGED_DIR)
    return folder


class LoRAHandoff(L.Callback):
    """At the end of ``fit``, write the adapter, the merged model and ``handoff.json`` for the next stage.

    The next stage uses ``<folder>/merged`` as its ``model`` and starts a fresh adapter, or continues this one with
    ``LoRASettings(init_from="<folder>/adapter")``. Rank 0 writes; every rank waits at a barrier until it is done.
    The module must expose ``backbone`` (a ``peft.PeftModel`` when LoRA is on) and may expose ``tokenizer``.
    Sharded strategies (FSDP, DeepSpeed) are refused: rank 0 would see only its shard of the adapter.

    Args:
        folder: hand-off folder; ``None`` is ``<trainer.log_dir>/handoff`` (``default_root_dir`` without a logger).
        dtype: weight dtype of the merged model (``float32``, ``bfloat16``, ``float16``).
    """

    def __init__(self, folder: str | None = None, dtype: str = "float32") -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r} (option `dtype`); choose one of {sorted(DTYPES)}")
        self.folder = folder
        self.dtype = dtype

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, FSDPStrategy | DeepSpeedStrategy):
            raise NotImplementedError(
                f"LoRAHandoff does not support {type(trainer.strategy).__name__}: use DDP or a single device"
            )

    def resolve_folder(self, trainer: L.Trainer) -> Path:
        """The hand-off folder (call on every rank: ``trainer.log_dir`` broadcasts)."""
        if self.folder is not None:
            return Path(self.folder)
        return Path(trainer.log_dir or trainer.default_root_dir) / "handoff"

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = self.resolve_folder(trainer)
        if trainer.is_global_zero:
            write_handoff(
                pl_module.backbone,
                folder,
                tokenizer=getattr(pl_module, "tokenizer", None),
                dtype=self.dtype,
                global_step=trainer.global_step,
            )
        trainer.strategy.barrier("lora_handoff")
