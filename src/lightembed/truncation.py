"""Smaller, faster versions of one model: fewer output dimensions (Matryoshka) and fewer layers (2D-Matryoshka).

``truncate_dim`` keeps the first ``d`` dimensions of every embedding, as sentence-transformers' ``truncate_dim``
does ("Matryoshka Representation Learning", Kusupati et al., 2022); ``layers`` runs only the first ``k`` transformer
blocks ("2D Matryoshka Sentence Embeddings", Li et al., 2024; "ESE: Espresso Sentence Embeddings", Li et al., 2024).
The layers are really removed from the model (its block list is sliced and its config says ``k``), so the model is
faster, and a saved one loads with ``k`` layers in lightembed, sentence-transformers and transformers alike.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import PretrainedConfig

from lightembed.backbones import block_list


def check_truncate_dim(truncate_dim: int | None, hidden_size: int | None = None, option: str = "truncate_dim") -> None:
    """Raise one clear error when ``truncate_dim`` is not in ``[1, hidden_size]`` (``None``: no truncation)."""
    if truncate_dim is None:
        return
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or truncate_dim < 1:
        raise ValueError(f"{option} must be a positive number of dimensions, got {truncate_dim!r}")
    if hidden_size is not None and truncate_dim > hidden_size:
        raise ValueError(f"{option}={truncate_dim} exceeds the model's embedding size {hidden_size}")


def check_layers(layers: int | None, count: int | None = None, option: str = "layers") -> None:
    """Raise one clear error when ``layers`` is not in ``[1, count]`` (``None``: every layer)."""
    if layers is None:
        return
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"{option} must be a positive number of transformer layers, got {layers!r}")
    if count is not None and layers > count:
        raise ValueError(f"{option}={layers} exceeds the model's {count} transformer layers")


def truncate_embeddings(embeddings: Tensor, truncate_dim: int | None) -> Tensor:
    """The first ``truncate_dim`` dimensions: ``(..., H)`` -> ``(..., d)`` (``None``: unchanged)."""
    return embeddings if truncate_dim is None else embeddings[..., :truncate_dim]


def layer_count(model: nn.Module) -> int:
    """How many transformer blocks ``model`` runs."""
    return len(block_list(model)[1])


def keep_first_layers(model: nn.Module, layers: int, option: str = "layers") -> nn.Module:
    """Cut ``model`` (in place) to its first ``layers`` transformer blocks; returns it.

    The block list is replaced by its prefix and every Hugging Face config inside says ``num_hidden_layers=layers``
    (and keeps the prefix of per-layer settings such as ``layer_types``), so ``save_pretrained`` writes a model that
    loads with ``layers`` blocks.
    """
    name, blocks = block_list(model)
    check_layers(layers, len(blocks), option)
    if layers == len(blocks):
        return model
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, nn.ModuleList(list(blocks)[:layers]))
    configs = {id(c): c for m in model.modules() if isinstance(c := getattr(m, "config", None), PretrainedConfig)}
    for config in configs.values():
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[:layers]
        config.num_hidden_layers = layers
    return model
