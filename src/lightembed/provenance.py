"""Where a result came from: file hashes, the git commit of this checkout, package versions, the machine.

The pipeline manifest, the evaluation report, mined-negative files, packaged-model checksums and the data fingerprint
all record provenance through these functions, so a hash or a commit means the same thing in every file lightembed
writes.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

# Packages whose versions decide a score or a trained model.
PACKAGES = (
    "lightembed",
    "torch",
    "transformers",
    "lightning",
    "peft",
    "datasets",
    "scikit-learn",
    "numpy",
    "scipy",
    "sentence-transformers",
    "mteb",
)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes as 64 hex digits, read in blocks (memory stays flat for multi-GB weights)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def bytes_sha256(data: bytes) -> str:
    """sha256 of ``data`` as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout holding this package, or None (an installed wheel, or no git)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict[str, Any]:
    """Where a result was produced: git commit, package versions, Python, platform, torch threads."""
    import torch  # deferred: provenance is imported by light modules that need only the hashes

    return {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
