"""The sentence-transformers folder format: the files an export holds beside the Hugging Face weights.

:meth:`lightembed.encoder.Encoder.save_pretrained` writes them and :meth:`~lightembed.encoder.Encoder.from_pretrained`
reads them back, so ``SentenceTransformer(folder)`` and lightembed load the same pooling, normalisation, max length
and prompts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from lightembed.backbones import resolve_model_path

log = logging.getLogger(__name__)

SETTINGS_FILE = "lightembed.json"  # written last into an export: pooling, normalize, max_length
ST_CONFIG_FILE = "config_sentence_transformers.json"  # similarity function, prompts, default prompt name
# lightembed pooling name -> the sentence-transformers Pooling config key that selects it.
ST_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "weighted_mean": "pooling_mode_weightedmean_tokens",
    "last_token": "pooling_mode_lasttoken",
}


def write_st_files(
    folder: Path, pooling: str, normalize: bool, dimension: int, max_length: int, truncate_dim: int | None = None
) -> None:
    """``modules.json`` (Transformer -> Pooling [-> Dense truncation] [-> Normalize]), the pooling config and the
    max length.

    sentence-transformers keeps ``truncate_dim`` out of what it saves and truncates after its modules (so after a
    Normalize module), so a truncated export carries the truncation as a module: a bias-free identity ``Dense`` onto
    the first ``truncate_dim`` dimensions, placed before Normalize so the embedding is renormalised after truncation,
    as lightembed's ``encode`` does; ``SentenceTransformer(folder)`` then needs no argument.
    """
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if truncate_dim is not None:
        path = f"{len(modules)}_Dense"
        modules.append({"idx": 2, "name": "2", "path": path, "type": "sentence_transformers.models.Dense"})
        config = {"in_features": dimension, "out_features": truncate_dim, "bias": False}
        write_json(folder / path / "config.json", config | {"activation_function": "torch.nn.modules.linear.Identity"})
        # (d, H) rows of the identity: x @ W.T is exactly x[:, :d]
        save_file(
            {"linear.weight": torch.eye(dimension)[:truncate_dim].contiguous()}, folder / path / "model.safetensors"
        )
    if normalize:
        idx = len(modules)
        path = f"{idx}_Normalize"
        modules.append({"idx": idx, "name": str(idx), "path": path, "type": "sentence_transformers.models.Normalize"})
        (folder / path).mkdir(exist_ok=True)
    write_json(folder / "modules.json", modules)
    modes = {key: name == pooling for name, key in ST_POOLING_KEYS.items()}
    modes["pooling_mode_mean_sqrt_len_tokens"] = False
    # lightembed leaves an instruction out of mean/max/weighted-mean pooling; cls and last_token take their token
    # whatever precedes it (lightembed.pooling.pool), which sentence-transformers does with the prompt included
    include_prompt = pooling in ("cls", "last_token")
    write_json(
        folder / "1_Pooling" / "config.json",
        {"word_embedding_dimension": dimension, **modes, "include_prompt": include_prompt},
    )
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})


def write_st_prompts(
    folder: Path, prompts: dict[str, str], default_prompt_name: str | None, truncate_dim: int | None = None
) -> None:
    """``config_sentence_transformers.json``: cosine similarity, the named prompts (instructions) and the
    ``truncate_dim`` (when set: sentence-transformers ignores the key, lightembed reads it from a folder without
    ``lightembed.json``)."""
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise ValueError(f"default prompt {default_prompt_name!r} is not one of the prompts {sorted(prompts)}")
    config = {"similarity_fn_name": "cosine", "prompts": prompts, "default_prompt_name": default_prompt_name}
    if truncate_dim is not None:
        config["truncate_dim"] = truncate_dim
    write_json(folder / ST_CONFIG_FILE, config)


def folder_prompts(folder: Path) -> tuple[dict[str, str], str | None]:
    """The prompts and default prompt name of a sentence-transformers folder (none when it records none)."""
    path = folder / ST_CONFIG_FILE
    if not path.is_file():
        return {}, None
    config = json.loads(path.read_text())
    return dict(config.get("prompts") or {}), config.get("default_prompt_name")


def folder_settings(folder: Path) -> dict[str, Any]:
    """Pooling/normalize/max_length (and truncate_dim) recorded in a lightembed export or a sentence-transformers
    folder."""
    if (folder / SETTINGS_FILE).is_file():
        return json.loads((folder / SETTINGS_FILE).read_text())
    settings: dict[str, Any] = {}
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
    st_config = folder / ST_CONFIG_FILE
    if st_config.is_file() and json.loads(st_config.read_text()).get("truncate_dim") is not None:
        settings["truncate_dim"] = json.loads(st_config.read_text())["truncate_dim"]
    return settings


def copy_pooler_weights(base: str, folder: Path, prefix: str) -> list[str]:
    """Copy the ``pooler.*`` weights of the base model's safetensors into the export's ``model.safetensors``.

    lightembed loads BERT-like encoders without their pooler (``add_pooling_layer=False``: its output is never
    pooled), so an export would lack weights a plain ``AutoModel.from_pretrained`` expects. No gradient reaches them
    in training, so the base's values are the trained model's, as in a sentence-transformers fine-tune. ``prefix`` is
    the model's ``base_model_prefix`` (a task model's ``bert.pooler...`` keys). Returns the copied names (none when
    the base has no pooler or is not a local folder).
    """
    source = Path(resolve_model_path(base))
    target = folder / "model.safetensors"
    if not source.is_dir() or not target.is_file():
        return []
    state = load_file(target)
    pooler: dict[str, Tensor] = {}
    for file in sorted(source.glob("*.safetensors")):
        for name, value in load_file(file).items():
            name = name.removeprefix(f"{prefix}.") if prefix else name
            if name.startswith("pooler.") and name not in state:
                pooler[name] = value
    if pooler:
        save_file({**state, **pooler}, target, metadata={"format": "pt"})
        log.info("export: kept the base model's pooler weights %s", sorted(pooler))
    return sorted(pooler)


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
