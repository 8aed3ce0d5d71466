"""Python API: load any trained or pretrained encoder and embed text.

>>> from lightembed import load_encoder
>>> encoder = load_encoder("packaged:all-MiniLM-L6-v2")
>>> encoder.encode(["a sentence", "another one"]).shape
torch.Size([2, 384])
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lightembed.backbones import resolve_model_path
from lightembed.callbacks.export import SETTINGS_FILE, ST_POOLING_KEYS
from lightembed.stages.base import STAGE_CLASS_KEY, EmbeddingModule


def _folder_settings(folder: Path) -> dict:
    """Pooling/normalize/max_length recorded in a lightembed export or a sentence-transformers folder."""
    if (folder / SETTINGS_FILE).is_file():
        return json.loads((folder / SETTINGS_FILE).read_text())
    settings: dict = {}
    pooling_config = folder / "1_Pooling" / "config.json"
    if pooling_config.is_file():
        config = json.loads(pooling_config.read_text())
        chosen = [name for name, key in ST_POOLING_KEYS.items() if config.get(key)]
        if len(chosen) == 1:
            settings["pooling"] = chosen[0]
    if (folder / "modules.json").is_file():
        settings["normalize"] = "Normalize" in (folder / "modules.json").read_text()
    bert_config = folder / "sentence_bert_config.json"
    if bert_config.is_file():
        settings["max_length"] = json.loads(bert_config.read_text()).get("max_seq_length", 512)
    return settings


def _stage_class(checkpoint: Path) -> type[EmbeddingModule]:
    """The stage class that wrote ``checkpoint`` (its extra parts, e.g. a deletion proxy, must load too)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True).get(STAGE_CLASS_KEY)
    if saved is None:  # written before the class was recorded: the encoder alone
        return EmbeddingModule
    module_name, _, qualname = saved.partition(":")
    cls = getattr(importlib.import_module(module_name), qualname, None)
    if not (isinstance(cls, type) and issubclass(cls, EmbeddingModule)):
        raise ValueError(f"checkpoint {checkpoint} names stage class {saved!r}, which is not a lightembed stage")
    return cls


def load_encoder(
    model: str,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_length: int | None = None,
) -> EmbeddingModule:
    """Load an encoder from a Hub id, a local folder, a ``packaged:`` name or a Lightning ``.ckpt`` checkpoint.

    Settings not given are read from the model (a lightembed export, a sentence-transformers folder, or a
    checkpoint's hyperparameters); otherwise mean pooling, no normalisation, 512 tokens.
    """
    if model.endswith(".ckpt"):
        path = Path(resolve_model_path(model))
        given = {"pooling": pooling, "normalize": normalize, "max_length": max_length}
        overrides = {k: v for k, v in given.items() if v is not None}
        module = _stage_class(path).load_from_checkpoint(path, map_location="cpu", **overrides)
        return module.eval()
    settings = {"pooling": "mean", "normalize": False, "max_length": 512}
    local = Path(resolve_model_path(model))
    if local.is_dir():
        settings.update(_folder_settings(local))
    given = {"pooling": pooling, "normalize": normalize, "max_length": max_length}
    settings.update({k: v for k, v in given.items() if v is not None})
    module = EmbeddingModule(model=model, **settings)
    module.configure_model()
    return module.eval()


def encode(model: str | EmbeddingModule, texts: Sequence[str], batch_size: int = 64) -> Tensor:
    """Embed ``texts`` with ``model`` (a name accepted by :func:`load_encoder`, or a loaded module): ``(N, H)``."""
    encoder = load_encoder(model) if isinstance(model, str) else model
    return encoder.encode(texts, batch_size=batch_size)
