"""Run an ordered chain of training stages from one YAML: hand-off, resume, and a run manifest.

``lightembed pipeline configs/pipelines/X.yaml [--output DIR] [--dry-run]``

Pipeline file
=============
.. code-block:: yaml

    name: contrastive_minilm          # required; names the default output folder
    output_dir: null                  # default checkpoints/<name> (relative to the working directory)
    model: packaged:all-MiniLM-L6-v2  # required; input of the first stage: Hub id, local folder or packaged:<name>
    seed: 0                           # optional; passed to every stage as --seed_everything
    stages:                           # required, run in order; stage k+1 trains from stage k's export folder
      - name: cosent_stsb             # required, unique; letters, digits, '.', '_', '-'
        configs:                      # required; LightningCLI --config files, in order. Relative paths are looked
          - configs/trainer/cpu.yaml  #   up next to the pipeline file, then in the repository root (the nearest
          - configs/model/cosent_minilm.yaml  # ancestor of the pipeline file holding pyproject.toml or .git)
        args: ["--trainer.max_steps=200"]     # optional extra LightningCLI arguments, after the configs
        init_adapter_from_previous: false     # optional; true adds --model.init_args.lora.init_from=<prev>/adapter
    evaluate:                         # optional; STS of the final export folder, printed and put in the manifest
      sts: ["sts/stsb/test.jsonl"]    # [NAME=]SOURCE as for ``lightembed evaluate --sts``
      data_root: null                 # folder for relative sources (default $LIGHTEMBED_DATA)
      split: test                     # split read from Hub ids and per-split folders
      batch_size: 64
      instruction: null               # prefix for every sentence, excluded from pooling (instructed decoders)

Unknown keys and wrong types are errors that name the file and the key. A stage's ``args`` may not set what the
pipeline pins (input model, run folder, logger location, ``--ckpt_path``, and the seed when ``seed`` is given).

Folder layout
=============
::

    <output_dir>/manifest.json          one record per stage (below), rewritten atomically after every change
    <output_dir>/pipeline.lock          pid and host of the run using the folder (a second run is refused; the
                                        lock of a process that is gone is taken over)
    <output_dir>/<stage>/               the stage's run folder = trainer.log_dir (logger save_dir/name/version pinned
                                        to <output_dir>, <stage> and ""): config.yaml, hparams.yaml, TensorBoard events
    <output_dir>/<stage>/checkpoints/   the checkpoints of the stage's own ModelCheckpoint (e.g. best-step=N.ckpt)
    <output_dir>/<stage>/resume/last.ckpt  written by :class:`ResumeCheckpoint` at the end of every training epoch
    <output_dir>/<stage>/export/        written by ``ExportCallback``: the next stage's ``model`` (a LoRA stage also
                                        writes ``export/adapter/``, used by ``init_adapter_from_previous``)

Every stage's trainer config needs a logger that takes ``save_dir``/``name``/``version`` (TensorBoardLogger or
CSVLogger, as in ``configs/trainer/cpu.yaml``) and ``lightembed.callbacks.ExportCallback``.

Manifest
========
``stages.<name>`` holds: ``status`` (``pending`` / ``running`` / ``failed`` / ``done``), ``input_model``,
``output`` (export folder), ``run_dir``, ``argv`` (the ``lightembed`` command of the stage), ``fingerprint`` (hash
of the stage's parsed configs, args, input and seed), ``resumed_from``, ``attempts``, ``error`` (when failed),
``git_commit``, ``seed``, ``config_file`` and ``config`` (the config LightningCLI saved), ``data`` (sha256 of every
local train/val/test file, or the Hub id), ``steps`` (``trainer.global_step``), ``metrics``
(``trainer.callback_metrics`` at the end of fit, plus those of the test pass after it), ``wall_time_s`` (of the last
attempt), ``started_at``/``finished_at``. ``evaluation`` holds the final STS results. A stage is marked ``done``
only after its export folder is complete (``lightembed.json`` is written last), so a killed pipeline never shows a
stage as done that is not.

Resume
======
Rerunning the same command skips a ``done`` stage when its export folder is still complete, its fingerprint is
unchanged and no earlier stage ran again in this invocation. Otherwise, when ``resume/last.ckpt`` exists and the
stage is unchanged, the stage continues from it (``--ckpt_path``); a stage whose export was deleted resumes from
its final checkpoint and only exports again. A stage that changed, or that follows a stage which ran or resumed in
this invocation, starts over; its old run folder is moved aside to ``<stage>.stale-<time>`` (never deleted).

Resume is exact at epoch boundaries only. ``last.ckpt`` is written at every epoch end (model, optimizer, scheduler,
loops, callbacks), the data order is fixed by the samplers' seed and epoch, and :class:`ResumeCheckpoint` reseeds
the RNGs at the first batch of every epoch from ``(seed, epoch, rank)``, so dropout does not depend on whether the
epoch followed a restart (with deterministic settings the final weights of a killed and resumed pipeline equal an
uninterrupted run's; tests/test_pipeline.py checks it). A stage killed mid-epoch loses that partial epoch
(Lightning cannot replay the middle of an epoch of a plain DataLoader exactly), and a stage shorter than one epoch
has nothing to resume from: give long stages several shorter epochs (``limit_train_batches`` + ``max_epochs``).
DataLoader workers' own seeds are not reproduced, which matters only if a dataset or collator draws random numbers.

Execution
=========
Stages run in this process, one after the other, through :func:`lightembed.cli.build_cli` (the same code path as
``lightembed fit``): simple, and metrics come straight from the trainer. Under DDP with Lightning's subprocess
launcher every rank re-runs the command and so walks the same stages; only global rank 0 holds the lock, writes
the manifest, moves folders and evaluates.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Checkpoint

from lightembed.backbones import resolve_model_path
from lightembed.callbacks.export import SETTINGS_FILE, ExportCallback
from lightembed.packaged import is_packaged

MANIFEST_FILE = "manifest.json"
LOCK_FILE = "pipeline.lock"
"""Held (pid and host inside) by the run using an output folder; a second run on the same folder is refused."""
RESUME_DIR = "resume"
"""Sub-folder of a stage's run folder holding the epoch-end ``last.ckpt``."""
EXPORT_DIR = "export"
ADAPTER_DIR = "adapter"
FORMAT_VERSION = 1

_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PIPELINE_KEYS = {"name", "output_dir", "model", "seed", "stages", "evaluate"}
_STAGE_KEYS = {"name", "configs", "args", "init_adapter_from_previous"}
_EVALUATE_KEYS = {"sts", "data_root", "split", "batch_size", "instruction"}
_PINNED = (
    "--model.init_args.model",
    "--trainer.default_root_dir",
    "--trainer.logger.init_args.save_dir",
    "--trainer.logger.init_args.name",
    "--trainer.logger.init_args.version",
    "--ckpt_path",
)
"""Stage arguments the pipeline sets itself (a stage's ``args`` may not)."""
_INIT_FROM = "--model.init_args.lora.init_from"


# ---------------------------------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class StageSpec:
    """One stage: LightningCLI ``--config`` files (resolved, absolute) and extra arguments."""

    name: str
    configs: tuple[Path, ...]
    args: tuple[str, ...] = ()
    init_adapter_from_previous: bool = False


@dataclass(frozen=True)
class EvaluateSpec:
    """STS evaluation of the final model: ``[NAME=]SOURCE`` strings as for ``lightembed evaluate --sts``."""

    sts: tuple[str, ...]
    data_root: str | None = None
    split: str = "test"
    batch_size: int = 64
    instruction: str | None = None


@dataclass(frozen=True)
class PipelineSpec:
    """A parsed pipeline file (see the module docstring)."""

    name: str
    model: str
    stages: tuple[StageSpec, ...]
    output_dir: Path
    seed: int | None = None
    evaluate: EvaluateSpec | None = None
    source: Path | None = None


class PipelineError(ValueError):
    """A pipeline file or run folder that cannot be used as it is; the message names the file, stage or path."""


def _check_keys(mapping: Any, allowed: set[str], required: set[str], where: str) -> dict:
    if not isinstance(mapping, dict):
        raise PipelineError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise PipelineError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(mapping))
    if missing:
        raise PipelineError(f"{where}: missing required key(s) {missing}")
    return mapping


def _typed(value: Any, kind: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise PipelineError(f"{where}: expected {names}, got {value!r}")
    return value


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    _typed(value, list, where)
    return tuple(_typed(item, str, f"{where}[{i}]") for i, item in enumerate(value))


def repo_root(start: Path) -> Path | None:
    """The nearest ancestor of ``start`` (included) holding ``pyproject.toml`` or ``.git``, else None."""
    for folder in [start, *start.parents]:
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return None


def _resolve_config(entry: str, pipeline_dir: Path, where: str) -> Path:
    path = Path(entry).expanduser()
    if path.is_absolute():
        tried = [path]
    else:
        root = repo_root(pipeline_dir)
        tried = list(dict.fromkeys([pipeline_dir / path, *([root / path] if root else [])]))
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    raise PipelineError(f"{where}: config file {entry!r} not found; tried {[str(p) for p in tried]}")


def _parse_stage(raw: Any, index: int, pipeline_dir: Path, seed_pinned: bool, where: str) -> StageSpec:
    where = f"{where}: stages[{index}]"
    raw = _check_keys(raw, _STAGE_KEYS, {"name", "configs"}, where)
    name = _typed(raw["name"], str, f"{where}.name")
    if not _STAGE_NAME.match(name):
        raise PipelineError(f"{where}.name: {name!r} is not a folder name (letters, digits, '.', '_', '-')")
    where = f"{where} ({name!r})"
    configs = _str_list(raw["configs"], f"{where}.configs")
    if not configs:
        raise PipelineError(f"{where}.configs: give at least one LightningCLI config file")
    args = _str_list(raw.get("args") or [], f"{where}.args")
    init_adapter = _typed(raw.get("init_adapter_from_previous", False), bool, f"{where}.init_adapter_from_previous")
    if init_adapter and index == 0:
        raise PipelineError(f"{where}: init_adapter_from_previous is set but the first stage has no previous stage")
    pinned = _PINNED + (("--seed_everything",) if seed_pinned else ()) + ((_INIT_FROM,) if init_adapter else ())
    for arg in args:
        if arg.split("=", 1)[0] in pinned:
            raise PipelineError(f"{where}.args: {arg!r} is set by the pipeline; remove it (pinned: {list(pinned)})")
    resolved = tuple(_resolve_config(c, pipeline_dir, f"{where}.configs[{i}]") for i, c in enumerate(configs))
    return StageSpec(name, resolved, args, init_adapter)


def load_pipeline(path: str | Path, output_dir: str | Path | None = None) -> PipelineSpec:
    """Parse and check a pipeline file; ``output_dir`` overrides the file's (both relative to the working dir)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pipeline file {str(path)!r} does not exist")
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PipelineError(f"{where}: not valid YAML: {err}") from err
    raw = _check_keys(raw, _PIPELINE_KEYS, {"name", "model", "stages"}, where)
    name = _typed(raw["name"], str, f"{where}: name")
    if not _STAGE_NAME.match(name):
        raise PipelineError(f"{where}: name {name!r} is not a folder name (letters, digits, '.', '_', '-')")
    model = _typed(raw["model"], str, f"{where}: model")
    seed = _typed(raw.get("seed"), int, f"{where}: seed", optional=True)
    stages_raw = _typed(raw["stages"], list, f"{where}: stages")
    if not stages_raw:
        raise PipelineError(f"{where}: stages is empty")
    pipeline_dir = path.resolve().parent
    stages = tuple(_parse_stage(s, i, pipeline_dir, seed is not None, where) for i, s in enumerate(stages_raw))
    names = [s.name for s in stages]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PipelineError(f"{where}: stage names must be unique; repeated: {duplicates}")
    evaluate = None
    if raw.get("evaluate") is not None:
        ev = _check_keys(raw["evaluate"], _EVALUATE_KEYS, {"sts"}, f"{where}: evaluate")
        sts = _str_list(ev["sts"], f"{where}: evaluate.sts")
        if not sts:
            raise PipelineError(f"{where}: evaluate.sts is empty")
        evaluate = EvaluateSpec(
            sts=sts,
            data_root=_typed(ev.get("data_root"), str, f"{where}: evaluate.data_root", optional=True),
            split=_typed(ev.get("split", "test"), str, f"{where}: evaluate.split"),
            batch_size=_typed(ev.get("batch_size", 64), int, f"{where}: evaluate.batch_size"),
            instruction=_typed(ev.get("instruction"), str, f"{where}: evaluate.instruction", optional=True),
        )
    out = output_dir or _typed(raw.get("output_dir"), str, f"{where}: output_dir", optional=True)
    out = Path(out or Path("checkpoints") / name).expanduser().resolve()
    return PipelineSpec(name, model, stages, out, seed, evaluate, path.resolve())


# ------------------------------------------------------------------------------------------ exact resume
def epoch_seed(base_seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch on one rank: a hash of ``(base_seed, epoch, rank)`` in ``[0, 2**32)``."""
    digest = hashlib.sha256(f"{base_seed}:{epoch}:{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class ResumeCheckpoint(Checkpoint):
    """Exact resume at epoch boundaries: ``<dirpath>/last.ckpt`` at every epoch end, RNGs reseeded at every epoch.

    * At the end of every training epoch it writes ``last.ckpt`` (to ``last.ckpt.partial``, then renamed, so a
      kill never leaves half a checkpoint). As a :class:`~lightning.pytorch.callbacks.Checkpoint` it runs after the
      other callbacks' epoch-end hooks, so the file holds their updated states (a best-model ``ModelCheckpoint``'s).
    * At the first batch of every epoch it seeds torch (CPU and CUDA), numpy and ``random`` from
      ``(base seed, epoch, global rank)``. An epoch's dropout masks then do not depend on what ran before it, so a
      run resumed from an epoch-end checkpoint draws the same numbers as an uninterrupted one (a fresh run and a
      resumed one create the DataLoader iterator, which draws from the global RNG, at different moments; the data
      order itself is fixed by the samplers' seed and epoch). The base seed is ``$PL_GLOBAL_SEED`` (set by
      ``seed_everything``), else a random one; it is kept in the checkpoint.

    Args:
        dirpath: folder of ``last.ckpt``.
    """

    FILENAME = "last.ckpt"

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.base_seed: int | None = None

    @property
    def path(self) -> Path:
        return Path(self.dirpath) / self.FILENAME

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # fail before training, not after: a pipeline stage hands its export on
            _export_callback(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.base_seed is None:  # not restored from a checkpoint
            env = os.environ.get("PL_GLOBAL_SEED")
            self.base_seed = int(env) if env is not None else random.SystemRandom().randrange(2**32)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            assert self.base_seed is not None
            seed = epoch_seed(self.base_seed, trainer.current_epoch, trainer.global_rank)
            torch.manual_seed(seed)  # CPU and every CUDA device
            np.random.seed(seed)
            random.seed(seed)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        # write next to the target, then rename: a kill leaves the previous checkpoint or the new one, never half of
        # one (Lightning's own temporary file may sit on another file system, where its final move is a copy)
        partial = self.path.with_name(self.FILENAME + ".partial")
        trainer.save_checkpoint(partial)  # every rank calls it; it ends with a barrier
        if trainer.is_global_zero:
            if self.path.is_dir():  # sharded strategies write folders, which os.replace cannot overwrite
                shutil.rmtree(self.path)
            os.replace(partial, self.path)
        trainer.strategy.barrier("ResumeCheckpoint")

    def state_dict(self) -> dict[str, Any]:
        return {"base_seed": self.base_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_seed = state_dict.get("base_seed")


# ------------------------------------------------------------------------------------------------ helpers
def _is_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout holding this package, or None (not a git checkout, no git)."""
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


def _stage_fingerprint(spec: PipelineSpec, stage: StageSpec, input_model: str) -> str:
    """Hash of what decides a stage's result: its configs (parsed, so comments do not count), args, input, adapter
    hand-off and seed."""
    payload = {
        "configs": [[str(c), yaml.safe_load(c.read_text())] for c in stage.configs],
        "args": list(stage.args),
        "init_adapter_from_previous": stage.init_adapter_from_previous,
        "input_model": input_model,
        "seed": spec.seed,
    }
    return _sha256_bytes(json.dumps(payload, sort_keys=True, default=str).encode())


def _input_model(spec: PipelineSpec, index: int, previous_export: Path | None) -> str:
    """The stage's input: the pipeline's ``model`` for the first stage, else the previous stage's export folder."""
    stage = spec.stages[index]
    if previous_export is not None:
        return str(previous_export)
    try:
        resolved = resolve_model_path(spec.model)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"pipeline {spec.name!r}, stage {stage.name!r}: input model {spec.model!r} not found ({err})"
        ) from err
    if is_packaged(spec.model) or not Path(resolved).exists():
        return spec.model  # packaged name or Hub id, passed on as written
    return str(Path(resolved).resolve())  # a local folder, absolute: the manifest says exactly what was read


def _check_input_folder(spec: PipelineSpec, index: int, previous: str, folder: Path, dry_run: bool) -> None:
    stage = spec.stages[index]
    if dry_run:
        return
    if not export_complete(folder):
        raise FileNotFoundError(
            f"pipeline {spec.name!r}, stage {stage.name!r}: input folder {str(folder)!r} (the export of stage "
            f"{previous!r}) is missing or incomplete (no {SETTINGS_FILE})"
        )
    if stage.init_adapter_from_previous and not (folder / ADAPTER_DIR).is_dir():
        raise FileNotFoundError(
            f"pipeline {spec.name!r}, stage {stage.name!r}: init_adapter_from_previous is set but stage "
            f"{previous!r} left no adapter folder {str(folder / ADAPTER_DIR)!r} (was it a LoRA stage?)"
        )


def stage_argv(
    spec: PipelineSpec, stage: StageSpec, input_model: str, previous_export: Path | None, ckpt: Path | None = None
) -> list[str]:
    """The ``lightembed fit`` arguments of a stage: its configs and args, then what the pipeline pins."""
    run_dir = spec.output_dir / stage.name
    resume = {
        "class_path": f"{ResumeCheckpoint.__module__}.{ResumeCheckpoint.__name__}",
        "init_args": {"dirpath": str(run_dir / RESUME_DIR)},
    }
    argv = ["fit"]
    for config in stage.configs:
        argv += ["--config", str(config)]
    argv += list(stage.args)
    argv += [
        "--model.init_args.model",
        input_model,
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={spec.output_dir}",
        f"--trainer.logger.init_args.name={stage.name}",
        "--trainer.logger.init_args.version=",  # run folder = <save_dir>/<name>/, no version_N level
        f"--trainer.callbacks+={json.dumps(resume)}",
    ]
    if spec.seed is not None:
        argv.append(f"--seed_everything={spec.seed}")
    if stage.init_adapter_from_previous:
        assert previous_export is not None  # checked by the parser: the first stage cannot set it
        argv.append(f"{_INIT_FROM}={previous_export / ADAPTER_DIR}")
    if ckpt is not None:
        argv.append(f"--ckpt_path={ckpt}")
    return argv


def _fingerprint_data(config: dict) -> dict[str, Any]:
    """sha256 (or Hub id) of the data sources named in the data module's resolved config (best effort: the options
    ``train``, ``val``, ``test``, ``sts_val`` of lightembed's data modules, with their split options)."""
    from lightembed.data.sources import source_fingerprint

    init = (config.get("data") or {}).get("init_args") or {}
    data_root = init.get("data_root")
    # option -> (its split option, that option's default)
    splits = {
        "train": ("train_split", "train"),
        "val": ("val_split", "validation"),
        "test": ("test_split", "test"),
        "sts_val": ("val_split", "validation"),
    }
    found: dict[str, Any] = {}

    def one(source: str, split: str) -> dict:
        try:
            return source_fingerprint(source, split, data_root)
        except (FileNotFoundError, ValueError) as err:
            return {"source": source, "error": str(err)}

    for key, (split_option, default_split) in splits.items():
        value, split = init.get(key), init.get(split_option) or default_split
        if isinstance(value, str):
            found[key] = one(value, split)
        elif isinstance(value, dict):
            found[key] = {name: one(src, split) for name, src in value.items() if isinstance(src, str)}
    return found


def _export_callback(trainer: L.Trainer) -> ExportCallback:
    for callback in trainer.callbacks:
        if isinstance(callback, ExportCallback):
            return callback
    raise PipelineError(
        "a pipeline stage needs lightembed.callbacks.ExportCallback in its trainer callbacks (the export folder is "
        f"the next stage's input); add it to the stage's trainer config (run folder {trainer.log_dir})"
    )


def _export_folder(trainer: L.Trainer) -> Path:
    folder = _export_callback(trainer).folder
    return Path(folder or Path(trainer.log_dir or trainer.default_root_dir) / EXPORT_DIR).resolve()


def _metrics(trainer: L.Trainer) -> dict[str, float]:
    """``trainer.callback_metrics`` as floats (scalars only)."""
    metrics = {}
    for key, value in trainer.callback_metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            metrics[key] = float(value.item())
        elif isinstance(value, int | float):
            metrics[key] = float(value)
    return metrics


# ----------------------------------------------------------------------------------------------- manifest
class _Manifest:
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
            "pipeline_sha256": _sha256_bytes(text) if spec.source else None,
            "output_dir": str(spec.output_dir),
            "model": spec.model,
            "seed": spec.seed,
            "updated_at": _now(),
            "stages": {s.name: old_stages.get(s.name) or {"status": "pending"} for s in spec.stages},
            "evaluation": old.get("evaluation"),
        }

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"][name]

    def save(self) -> None:
        if self.write_enabled:
            self.data["updated_at"] = _now()
            write_json_atomic(self.path, self.data)


@contextlib.contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """Hold ``<folder>/pipeline.lock`` while a run uses the folder: two runs would overwrite each other's manifest.

    A lock left by a process that is gone (``kill -9``) is taken over; one held by a live process, or by another
    host (which cannot be checked), raises :class:`PipelineError`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):  # being written, or left empty by a crash
                holder = None
            if holder is None or holder.get("host") != me["host"] or _pid_alive(holder.get("pid")):
                raise PipelineError(
                    f"output folder {folder} is in use by another pipeline run ({holder}); wait for it, use another "
                    f"--output, or delete {lock} if that run is gone"
                ) from None
            lock.unlink(missing_ok=True)  # its process is gone: take the folder over
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        break
    else:
        raise PipelineError(f"could not take the lock {lock}")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unreadable: do not take over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -------------------------------------------------------------------------------------------------- run
def _plan(record: dict, fingerprint: str, upstream_ran: bool, run_dir: Path) -> tuple[str, Path | None]:
    """``("skip" | "resume" | "run", checkpoint)`` for one stage, from its manifest record and run folder."""
    ckpt = run_dir / RESUME_DIR / ResumeCheckpoint.FILENAME
    unchanged = record.get("fingerprint") == fingerprint and not upstream_ran
    if unchanged and record.get("status") == "done" and record.get("output") and export_complete(record["output"]):
        return "skip", None
    if unchanged and ckpt.exists():  # a folder under sharded strategies
        return "resume", ckpt
    return "run", None


def _move_aside(run_dir: Path) -> Path | None:
    """Rename a non-empty run folder to ``<name>.stale-<time>`` so a fresh run cannot mix with it."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return None
    target = run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    run_dir.rename(target)
    return target


def _say(message: str) -> None:
    if _is_rank_zero():
        print(message, flush=True)


def _run_stage(argv: list[str], stage: str) -> Any:
    """``lightembed fit`` in this process; returns the LightningCLI (its trainer holds steps and metrics)."""
    from lightembed.cli import build_cli

    try:
        with warnings.catch_warnings():
            # under `lightembed pipeline`, sys.argv holds the pipeline command; it must stay (DDP relaunches it)
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            return build_cli(argv)
    except SystemExit as err:
        if err.code != 2:  # 2: the parser rejected the arguments; 1: Lightning after Ctrl-C
            raise
        raise PipelineError(
            f"stage {stage!r}: LightningCLI rejected the stage's configs/args (its message is above). Besides them the "
            "pipeline passes --model.init_args.model, --trainer.default_root_dir, "
            "--trainer.logger.init_args.{save_dir,name,version} and a ResumeCheckpoint callback, so the trainer "
            "config needs a logger with save_dir, name and version (TensorBoardLogger or CSVLogger, as in "
            "configs/trainer/cpu.yaml)"
        ) from err


def _evaluate(spec: PipelineSpec, model: Path) -> dict[str, Any]:
    from lightembed.api import load_encoder
    from lightembed.data.sources import source_fingerprint
    from lightembed.evaluation.sts import evaluate_sts, format_table, parse_named_sources

    ev = spec.evaluate
    assert ev is not None
    sources = parse_named_sources(list(ev.sts), ev.split)
    encoder = load_encoder(str(model))
    results = evaluate_sts(
        encoder,
        sources,
        split=ev.split,
        data_root=ev.data_root,
        batch_size=ev.batch_size,
        instruction=ev.instruction,
    )
    _say(f"pipeline {spec.name}: STS of {model}\n{format_table(results)}")
    return {
        "model": str(model),
        "split": ev.split,
        "instruction": ev.instruction,
        "sts": {r.name: r.to_dict() for r in results},
        "data": {name: source_fingerprint(src, ev.split, ev.data_root) for name, src in sources.items()},
        "finished_at": _now(),
    }


def run_pipeline(spec: PipelineSpec | str | Path, output_dir: str | Path | None = None, dry_run: bool = False) -> dict:
    """Run (or with ``dry_run`` only plan and print) the stages of a pipeline; returns the manifest as a dict."""
    if not isinstance(spec, PipelineSpec):
        spec = load_pipeline(spec, output_dir)
    elif output_dir is not None:
        raise ValueError("output_dir is for pipeline files; set PipelineSpec.output_dir instead")
    _input_model(spec, 0, None)  # a missing first input fails here, before the output folder is made
    if dry_run or not _is_rank_zero():  # DDP ranks > 0 re-run the command while rank 0 holds the lock
        return _run(spec, dry_run)
    with output_lock(spec.output_dir):
        return _run(spec, dry_run)


def _run(spec: PipelineSpec, dry_run: bool) -> dict:
    rank_zero = _is_rank_zero()
    manifest = _Manifest(spec, write=rank_zero and not dry_run)
    commit = git_commit()
    previous_export: Path | None = None
    upstream_ran = False
    for index, stage in enumerate(spec.stages):
        if previous_export is not None:
            _check_input_folder(spec, index, spec.stages[index - 1].name, previous_export, dry_run)
        input_model = _input_model(spec, index, previous_export)
        run_dir = spec.output_dir / stage.name
        record = manifest.stage(stage.name)
        fingerprint = _stage_fingerprint(spec, stage, input_model)
        action, ckpt = _plan(record, fingerprint, upstream_ran, run_dir)
        argv = stage_argv(spec, stage, input_model, previous_export, ckpt)
        if dry_run:
            note = " (old run folder would be moved aside)" if action == "run" and run_dir.is_dir() else ""
            _say(f"[{stage.name}] {action}{note}\n  lightembed {' '.join(argv)}")
            previous_export = Path(record["output"]) if action == "skip" else run_dir / EXPORT_DIR
            upstream_ran |= action != "skip"
            continue
        if action == "skip":
            _say(f"pipeline {spec.name}: stage {stage.name} is done, skipping ({record['output']})")
            previous_export = Path(record["output"])
            continue
        upstream_ran = True
        manifest.data["evaluation"] = None  # it described the old final model
        if action == "run" and rank_zero:
            moved = _move_aside(run_dir)
            if moved is not None:
                _say(f"pipeline {spec.name}: stage {stage.name} starts over; old run folder moved to {moved}")
        _say(f"pipeline {spec.name}: stage {stage.name} {'resumes from ' + str(ckpt) if ckpt else 'starts'}")
        record = {
            "status": "running",
            "input_model": input_model,
            "output": None,
            "run_dir": str(run_dir),
            "argv": ["lightembed", *argv],
            "fingerprint": fingerprint,
            "resumed_from": str(ckpt) if ckpt else None,
            "attempts": record.get("attempts", 1) + 1 if ckpt else 1,
            "git_commit": commit,
            "seed": spec.seed,
            "started_at": _now(),
        }
        manifest.data["stages"][stage.name] = record
        manifest.save()
        start = time.perf_counter()
        try:
            cli = _run_stage(argv, stage.name)
            trainer = cli.trainer
            export = _export_folder(trainer)
            if not export_complete(export):
                raise PipelineError(f"stage {stage.name!r} finished but its export folder {export} is incomplete")
        except BaseException as err:
            record.update(status="failed", error=f"{type(err).__name__}: {err}", finished_at=_now())
            manifest.save()
            raise
        config_file = Path(trainer.log_dir or run_dir) / "config.yaml"
        config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
        record.update(
            status="done",
            output=str(export),
            config_file=str(config_file) if config_file.is_file() else None,
            config=config,
            seed=config.get("seed_everything", spec.seed),
            data=_fingerprint_data(config),
            steps=int(trainer.global_step),
            metrics=_metrics(trainer),  # the CLI keeps the fit's metrics beside those of its test pass
            wall_time_s=round(time.perf_counter() - start, 3),
            finished_at=_now(),
        )
        manifest.save()
        _say(f"pipeline {spec.name}: stage {stage.name} done in {record['wall_time_s']:.1f} s -> {export}")
        previous_export = export
        del cli, trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if spec.evaluate is not None and not dry_run and rank_zero:
        assert previous_export is not None
        manifest.data["evaluation"] = _evaluate(spec, previous_export)
        manifest.save()
    return manifest.data


def pipeline_main(argv: Sequence[str]) -> dict:
    """``lightembed pipeline FILE [--output DIR] [--dry-run]``."""
    parser = argparse.ArgumentParser(
        prog="lightembed pipeline",
        description="Run the stages of a pipeline file in order, each from the previous one's export; "
        "rerunning skips finished stages and resumes an interrupted one.",
    )
    parser.add_argument("pipeline", help="pipeline YAML file (schema: lightembed.pipeline module docstring)")
    parser.add_argument("--output", default=None, metavar="DIR", help="output folder (default: the file's output_dir)")
    parser.add_argument("--dry-run", action="store_true", help="print each stage's action and command, run nothing")
    ns = parser.parse_args(list(argv))
    return run_pipeline(ns.pipeline, ns.output, dry_run=ns.dry_run)
