"""What a stage reads, by content: its configs as parsed, its input model's files, its data files.

The stage fingerprint hashes this record, so a stage reruns when the bytes it trains on change at the same path
(new data written over a file, another model saved into the input folder), not only when a path or an option does.
The record is kept in the manifest so that a refusal can say what changed.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from lightembed.backbones import resolve_model_path
from lightembed.fit import LightembedCLI
from lightembed.pipeline.manifest import fingerprint_data
from lightembed.pipeline.spec import PipelineError, PipelineSpec, StageSpec
from lightembed.provenance import bytes_sha256, file_sha256
from lightembed.stages.base import EmbeddingModule


class _ParseOnly(LightembedCLI):
    """The stage's LightningCLI parse (configs, args, links) without building the model, data or trainer."""

    def instantiate_classes(self) -> None:
        pass


def parse_stage_config(argv: Sequence[str], stage: str) -> dict[str, Any]:
    """The stage's merged config as ``lightembed fit`` parses it (``argv`` without ``fit`` and ``--ckpt_path``):
    the same parser, links included, without loading the model or reading the data."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            cli = _ParseOnly(
                EmbeddingModule,
                L.LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                seed_everything_default=None,  # no global seeding: nothing runs here
                auto_configure_optimizers=False,  # as build_cli: the optimizer is a stage option
                args=list(argv),
                run=False,
            )
    except SystemExit as err:
        raise PipelineError(
            f"stage {stage!r}: LightningCLI rejected the stage's configs/args (its message is above)"
        ) from err
    return cli.config.as_dict()


def folder_files(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (an export, or a model folder)."""
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def model_record(input_model: str) -> dict[str, Any]:
    """The input model by content: a local (or packaged) folder's file hashes, else the Hub id and the revision of
    its local cache when there is one."""
    try:
        resolved = Path(resolve_model_path(input_model))
    except FileNotFoundError:
        return {"model": input_model, "missing": True}
    if resolved.is_dir():
        return {"model": input_model, "files": folder_files(resolved)}
    if resolved.is_file():
        return {"model": input_model, "files": {resolved.name: file_sha256(resolved)}}
    if not resolved.exists() and "/" in input_model and not input_model.startswith(("/", ".", "~")):
        return {"model": input_model, "hub_revision": _hub_revision(input_model)}
    return {"model": input_model, "missing": True}


def _hub_revision(repo_id: str) -> str | None:
    """The commit of the cached snapshot of a Hub model (what an offline run loads), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(found, str) and "/snapshots/" in found:
        return found.split("/snapshots/", 1)[1].split("/", 1)[0]
    return None


def stage_inputs(spec: PipelineSpec, stage: StageSpec, input_model: str, argv: Sequence[str]) -> dict[str, Any]:
    """Everything that decides the stage's result, by content; ``argv`` is the stage's ``fit`` command."""
    config = parse_stage_config([a for a in argv[1:] if not a.startswith("--ckpt_path")], stage.name)
    inputs = {
        "configs": {str(c): yaml.safe_load(c.read_text()) for c in stage.configs},  # parsed: comments do not count
        "args": list(stage.args),
        "init_adapter_from_previous": stage.init_adapter_from_previous,
        "seed": spec.seed,
        "model": model_record(input_model),
        "data": _data_hashes(fingerprint_data(config)),
    }
    teacher = ((config.get("model") or {}).get("init_args") or {}).get("teacher")
    if isinstance(teacher, str):  # a distillation stage learns from a second model: new weights at its path count
        inputs["teacher"] = model_record(teacher)  # only then, so other stages' fingerprints stay as recorded
    return inputs


def _data_hashes(found: Mapping[str, Any]) -> dict[str, Any]:
    """``fingerprint_data`` without file sizes (the hash says it all), keyed so that changes are easy to name."""
    out: dict[str, Any] = {}

    def put(option: str, record: Mapping[str, Any]) -> None:
        if record.get("kind") == "local":
            for file in record["files"]:
                out[f"{option}: {file['path']}"] = file["sha256"]
        else:
            out[f"{option}: {record.get('source')}"] = {k: v for k, v in record.items() if k != "source"}

    for option, record in found.items():
        if isinstance(record, Mapping) and "source" not in record:  # {name: record}
            for name, one in record.items():
                put(f"{option}.{name}", one)
        elif isinstance(record, Mapping):
            put(option, record)
    return out


def inputs_fingerprint(inputs: Mapping[str, Any]) -> str:
    return bytes_sha256(json.dumps(inputs, sort_keys=True, default=str).encode())


def describe_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """One phrase per input that differs between two :func:`stage_inputs` records."""
    if not old:
        return ["its recorded fingerprint differs (recorded without the inputs, by an older lightembed)"]
    changes = []
    for key in ("configs", "args", "init_adapter_from_previous", "seed"):
        if old.get(key) != new.get(key):
            changes.append(f"its {key.replace('_', ' ')}")
    old_model, new_model = old.get("model") or {}, new.get("model") or {}
    if old_model.get("model") != new_model.get("model"):
        changes.append(f"its input model ({old_model.get('model')} -> {new_model.get('model')})")
    elif old_model != new_model:
        files = sorted(
            name
            for name in set(old_model.get("files") or {}) | set(new_model.get("files") or {})
            if (old_model.get("files") or {}).get(name) != (new_model.get("files") or {}).get(name)
        )
        what = f"files {', '.join(files[:5])}" if files else "revision"
        changes.append(f"the content of its input model {new_model.get('model')} ({what})")
    if old.get("teacher") != new.get("teacher"):
        changes.append(f"its teacher {(new.get('teacher') or old.get('teacher') or {}).get('model')}")
    old_data, new_data = old.get("data") or {}, new.get("data") or {}
    for name in sorted(set(old_data) | set(new_data)):
        if old_data.get(name) != new_data.get(name):
            state = "new" if name not in old_data else "gone" if name not in new_data else "content changed"
            changes.append(f"data {name} ({state})")
    return changes or ["its fingerprint"]
