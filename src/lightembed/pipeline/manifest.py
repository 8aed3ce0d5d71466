"""``<output_dir>/manifest.json``: one record per stage, rewritten atomically, and the fingerprints it compares.

See :mod:`lightembed.pipeline` for the record's fields and when a stage counts as done.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightembed.encoder import SETTINGS_FILE
from lightembed.pipeline.spec import PipelineError, PipelineSpec
from lightembed.provenance import bytes_sha256, file_sha256

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1

DATA_SOURCE_OPTIONS: dict[str, tuple[str, str]] = {
    "train": ("train_split", "train"),
    "val": ("val_split", "validation"),
    "test": ("test_split", "test"),
    "sts_val": ("val_split", "validation"),
}
"""The data-module options that name sources, each with the option holding its split and the split read when the
data module has no such option. lightembed's data modules take their sources under these names (one source, or a
``{name: source}`` mapping whose values are sources or ``{"source": ..., "split": ...}`` entries); a data module
with other source options is recorded without data hashes."""


def now() -> str:
    """Local time as ``YYYY-MM-DDTHH:MM:SS+zzzz`` (the manifest's time stamps)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file next to ``path`` and ``os.replace`` it: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as handle:
        handle.write(json.dumps(obj, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def export_complete(folder: str | Path) -> bool:
    """An export folder is complete once ``lightembed.json`` exists (the exporter writes it last)."""
    return (Path(folder) / SETTINGS_FILE).is_file()


def export_problems(record: Mapping[str, Any]) -> list[str]:
    """What is wrong with a done stage's export folder, checked against the file hashes in its manifest record
    (``export_files``): missing, changed or unfinished files. Empty when the export is intact."""
    folder = Path(record.get("output") or "")
    if not record.get("output") or not export_complete(folder):
        return [f"{SETTINGS_FILE} is missing (export unfinished or deleted)"]
    problems = []
    for name, digest in (record.get("export_files") or {}).items():
        file = folder / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif file_sha256(file) != digest:
            problems.append(f"{name} changed")
    return problems


def fingerprint_data(config: Mapping[str, Any]) -> dict[str, Any]:
    """sha256 (or Hub id) of the sources a stage's data module read, from its resolved config and
    :data:`DATA_SOURCE_OPTIONS`; a source that cannot be resolved is recorded with its error."""
    from lightembed.data.sources import source_fingerprint

    init = (config.get("data") or {}).get("init_args") or {}
    data_root = init.get("data_root")

    def one(source: str, split: str) -> dict:
        try:
            return source_fingerprint(source, split, data_root)
        except (FileNotFoundError, ValueError) as err:
            return {"source": source, "error": str(err)}

    def entry(value: Any, split: str) -> dict | None:
        if isinstance(value, str):
            return one(value, split)
        if isinstance(value, Mapping) and isinstance(value.get("source"), str):  # a source with its own options
            return one(value["source"], value.get("split") or split)
        return None

    found: dict[str, Any] = {}
    for option, (split_option, default_split) in DATA_SOURCE_OPTIONS.items():
        value, split = init.get(option), init.get(split_option) or default_split
        if isinstance(value, Mapping) and not isinstance(value.get("source"), str):  # {name: source}
            named = {name: entry(source, split) for name, source in value.items()}
            found[option] = {name: record for name, record in named.items() if record is not None}
        elif (record := entry(value, split)) is not None:
            found[option] = record
    return found


class Manifest:
    """``<output_dir>/manifest.json``: loaded once, changed in memory, rewritten atomically (rank 0 only)."""

    def __init__(self, spec: PipelineSpec, write: bool) -> None:
        self.path = spec.output_dir / MANIFEST_FILE
        self.write_enabled = write
        old: dict[str, Any] = {}
        if self.path.is_file():
            old = json.loads(self.path.read_text())
            if old.get("name") not in (None, spec.name):
                raise PipelineError(
                    f"{self.path} belongs to pipeline {old.get('name')!r}, not {spec.name!r}; choose another --output"
                )
        text = spec.source.read_bytes() if spec.source else b""
        old_stages = old.get("stages") or {}
        self.data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": spec.name,
            "pipeline_file": str(spec.source) if spec.source else None,
            "pipeline_sha256": bytes_sha256(text) if spec.source else None,
            "output_dir": str(spec.output_dir),
            "model": spec.model,
            "seed": spec.seed,
            "updated_at": now(),
            "stages": {s.name: old_stages.get(s.name) or {"status": "pending"} for s in spec.stages},
            "evaluation": old.get("evaluation"),
        }

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"][name]

    def save(self) -> None:
        if self.write_enabled:
            self.data["updated_at"] = now()
            write_json_atomic(self.path, self.data)
