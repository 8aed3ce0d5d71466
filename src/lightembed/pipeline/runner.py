"""Run the stages of a pipeline in order: plan (skip / resume / run), hand off exports, record the manifest.

Stages run in this process through :func:`lightembed.fit.build_cli`, the code path of ``lightembed fit``. See
:mod:`lightembed.pipeline` for the folder layout and the resume rules.
"""

from __future__ import annotations

import gc
import json
import shlex
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only

from lightembed.backbones import resolve_model_path
from lightembed.callbacks.resume import ResumeCheckpoint, checkpoint_problem, export_callback
from lightembed.encoder import SETTINGS_FILE
from lightembed.fit import BACKBONE_OPTION, build_cli
from lightembed.interrupts import Interrupted, interrupt_signal, received
from lightembed.packaged import is_packaged
from lightembed.pipeline.arms import SharedStages, run_arms, sts_record
from lightembed.pipeline.inputs import describe_changes, folder_files, inputs_fingerprint, stage_inputs
from lightembed.pipeline.lock import output_lock
from lightembed.pipeline.manifest import Manifest, export_complete, export_problems, fingerprint_data, now
from lightembed.pipeline.spec import INIT_FROM, PipelineError, PipelineSpec, StageSpec, load_pipeline
from lightembed.provenance import git_commit
from lightembed.user_errors import describe_user_error, is_parser_error

RESUME_DIR = "resume"
"""Sub-folder of a stage's run folder holding the epoch-end ``last.ckpt``."""
EXPORT_DIR = "export"
ADAPTER_DIR = "adapter"
"""Sub-folder of an export holding a LoRA stage's adapter (read by ``init_adapter_from_previous``)."""


def _is_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


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
        f"--{BACKBONE_OPTION}",
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
        argv.append(f"{INIT_FROM}={previous_export / ADAPTER_DIR}")
    if ckpt is not None:
        argv.append(f"--ckpt_path={ckpt}")
    return argv


def _export_folder(trainer: L.Trainer) -> Path:
    folder = export_callback(trainer).folder
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


class _Plan:
    """What to do with one stage: ``action`` ("skip" | "resume" | "run"), the checkpoint to resume from, and why."""

    def __init__(self, action: str, ckpt: Path | None = None, why: str = "") -> None:
        self.action, self.ckpt, self.why = action, ckpt, why


def _plan(
    spec: PipelineSpec, stage: StageSpec, record: dict, inputs: dict, upstream_ran: bool, restart: bool, dry_run: bool
) -> _Plan:
    """Skip, resume or run one stage, from its manifest record, its inputs now and its run folder."""
    if restart:
        return _Plan("run", why="--restart")
    if upstream_ran:
        return _Plan("run", why="an earlier stage ran again")
    changes = describe_changes(record.get("inputs"), inputs) if record.get("fingerprint") else []
    unchanged = record.get("fingerprint") == inputs_fingerprint(inputs)
    if not unchanged and record.get("status") == "done":
        return _Plan("run", why="changed since it was done: " + "; ".join(changes))
    problems = export_problems(record) if unchanged and record.get("status") == "done" else []
    if unchanged and record.get("status") == "done" and not problems:
        return _Plan("skip")
    ckpt = _good_checkpoint(spec, stage, dry_run)
    if ckpt is not None and not unchanged:
        what = "; ".join(changes) or "its fingerprint"
        raise PipelineError(
            f"stage {stage.name!r} was interrupted and its inputs changed since ({what}); resuming from {ckpt} "
            f"would mix the old and the new. Restore them, or start the stage over: add `--restart {stage.name}` "
            f"to the command (its run folder is moved aside, never deleted), or move {ckpt.parent} away yourself"
        )
    if ckpt is not None:
        why = f"export incomplete ({'; '.join(problems)}); exporting again" if problems else ""
        return _Plan("resume", ckpt, why)
    if problems:
        return _Plan("run", why=f"export incomplete ({'; '.join(problems)}) and no checkpoint to export from")
    return _Plan("run")


def _good_checkpoint(spec: PipelineSpec, stage: StageSpec, dry_run: bool) -> Path | None:
    """``last.ckpt``, else ``previous.ckpt`` of the stage; an unreadable one is named, moved aside (not deleted)
    and the next one tried."""
    resume = spec.output_dir / stage.name / RESUME_DIR
    for ckpt in (resume / ResumeCheckpoint.FILENAME, resume / ResumeCheckpoint.PREVIOUS):
        if not ckpt.exists():  # a folder under sharded strategies
            continue
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        if dry_run:
            _say(f"[{stage.name}] checkpoint {ckpt} is unreadable ({problem}); a run would move it aside")
            continue
        aside = ckpt.with_name(f"{ckpt.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        ckpt.rename(aside)
        _say(
            f"pipeline {spec.name}: stage {stage.name}: checkpoint {ckpt} is unreadable ({problem}); moved it to "
            f"{aside} and trying the previous checkpoint, else the stage starts over"
        )
    return None


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
    try:
        return build_cli(argv, exit_on_error=False)
    except Exception as err:
        if not is_parser_error(err):
            raise
        raise PipelineError(
            f"stage {stage!r}: its configs/args were rejected: {describe_user_error(err)}. Besides them the "
            f"pipeline passes --{BACKBONE_OPTION}, --trainer.default_root_dir, "
            "--trainer.logger.init_args.{save_dir,name,version} and a ResumeCheckpoint callback, so the trainer "
            "config needs a logger with save_dir, name and version (TensorBoardLogger or CSVLogger, as in "
            "configs/trainer/cpu.yaml)"
        ) from err


def _evaluate(spec: PipelineSpec, model: Path) -> dict[str, Any]:
    from lightembed.api import load_encoder

    assert spec.evaluate is not None
    _say(f"pipeline {spec.name}: evaluating the final model")
    return sts_record(spec.evaluate, load_encoder(str(model)), str(model))


def run_pipeline(
    spec: PipelineSpec | str | Path,
    output_dir: str | Path | None = None,
    dry_run: bool = False,
    restart: str | None = None,
) -> dict:
    """Run (or with ``dry_run`` only plan and print) the stages of a pipeline; returns the manifest as a dict.

    ``restart`` names a stage to start over (its run folder is moved aside), with every stage after it.
    """
    if not isinstance(spec, PipelineSpec):
        spec = load_pipeline(spec, output_dir)
    elif output_dir is not None:
        raise ValueError("output_dir is for pipeline files; set PipelineSpec.output_dir instead")
    names = [s.name for s in spec.stages]
    if restart is not None and restart not in names:
        raise PipelineError(f"--restart {restart!r}: pipeline {spec.name!r} has no such stage; its stages: {names}")
    _input_model(spec, 0, None)  # a missing first input fails here, before the output folder is made

    def run() -> dict:
        if spec.arms:
            return run_arms(spec, dry_run, restart, _run, _is_rank_zero())
        return _run(spec, dry_run, restart)

    if dry_run or not _is_rank_zero():  # DDP ranks > 0 re-run the command while rank 0 holds the lock
        return run()
    with output_lock(spec.output_dir):
        return run()


def _run(spec: PipelineSpec, dry_run: bool, restart: str | None, shared: SharedStages | None = None) -> dict:
    """The stage loop; ``shared`` (arms only) offers an earlier arm's export for a stage with the same inputs."""
    rank_zero = _is_rank_zero()
    manifest = Manifest(spec, write=rank_zero and not dry_run)
    commit = git_commit()
    previous_export: Path | None = None
    upstream_ran = False
    for index, stage in enumerate(spec.stages):
        if previous_export is not None:
            _check_input_folder(spec, index, spec.stages[index - 1].name, previous_export, dry_run)
        input_model = _input_model(spec, index, previous_export)
        run_dir = spec.output_dir / stage.name
        record = manifest.stage(stage.name)
        inputs = stage_inputs(spec, stage, input_model, stage_argv(spec, stage, input_model, previous_export))
        fingerprint = inputs_fingerprint(inputs)
        reused = shared and shared.reuse(stage.name, record, fingerprint, upstream_ran, stage.name == restart)
        if reused:
            record, fresh = reused
            origin = "arm {arm}, stage {stage}".format(**record["reused_from"])
            head = f"[{stage.name}] reuse" if dry_run else f"pipeline {spec.name}: stage {stage.name} reuses"
            _say(f"{head} the export of {origin} (same inputs): {record['output']}")
            if not dry_run:
                manifest.data["stages"][stage.name] = record
                manifest.data["evaluation"] = None
                manifest.save()
            previous_export, upstream_ran = Path(record["output"]), upstream_ran or fresh
            continue
        plan = _plan(spec, stage, record, inputs, upstream_ran, stage.name == restart, dry_run or not rank_zero)
        action, ckpt = plan.action, plan.ckpt
        argv = stage_argv(spec, stage, input_model, previous_export, ckpt)
        why = f" ({plan.why})" if plan.why else ""
        if dry_run:
            note = " (old run folder would be moved aside)" if action == "run" and run_dir.is_dir() else ""
            _say(f"[{stage.name}] {action}{why}{note}\n  {shlex.join(['lightembed', *argv])}")
            previous_export = Path(record["output"]) if action == "skip" else run_dir / EXPORT_DIR
            upstream_ran |= action != "skip"
            if shared is not None:
                planned = {"output": str(previous_export), "run_dir": str(run_dir)}
                shared.add(stage.name, fingerprint, record if action == "skip" else planned, action != "skip")
            continue
        if action == "skip":
            _say(f"pipeline {spec.name}: stage {stage.name} is done, skipping ({record['output']})")
            previous_export = Path(record["output"])
            if shared is not None:
                shared.add(stage.name, fingerprint, record, fresh=False)
            continue
        upstream_ran = True
        manifest.data["evaluation"] = None  # it described the old final model
        if action == "run" and rank_zero:
            moved = _move_aside(run_dir)
            if moved is not None:
                _say(f"pipeline {spec.name}: stage {stage.name} starts over{why}; old run folder moved to {moved}")
        _say(f"pipeline {spec.name}: stage {stage.name} {'resumes from ' + str(ckpt) if ckpt else 'starts'}{why}")
        record = {
            "status": "running",
            "input_model": input_model,
            "output": None,
            "run_dir": str(run_dir),
            "argv": ["lightembed", *argv],
            "fingerprint": fingerprint,
            "inputs": inputs,
            "resumed_from": str(ckpt) if ckpt else None,
            "attempts": record.get("attempts", 1) + 1 if ckpt else 1,
            "git_commit": commit,
            "seed": spec.seed,
            "started_at": now(),
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
            signum = interrupt_signal(err)
            status = "interrupted" if signum is not None else "failed"
            record.update(status=status, error=f"{type(err).__name__}: {err}", finished_at=now())
            manifest.save()
            if signum is not None:
                _say(_interrupted_note(spec, stage, run_dir))
            raise
        config_file = Path(trainer.log_dir or run_dir) / "config.yaml"
        config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
        record.update(
            status="done",
            output=str(export),
            export_files=folder_files(export),
            config_file=str(config_file) if config_file.is_file() else None,
            config=config,
            seed=config.get("seed_everything", spec.seed),
            data=fingerprint_data(config),
            steps=int(trainer.global_step),
            metrics=_metrics(trainer),  # the CLI keeps the fit's metrics beside those of its test pass
            wall_time_s=round(time.perf_counter() - start, 3),
            finished_at=now(),
        )
        manifest.save()
        if shared is not None:
            shared.add(stage.name, fingerprint, record, fresh=True)
        _say(f"pipeline {spec.name}: stage {stage.name} done in {record['wall_time_s']:.1f} s -> {export}")
        previous_export = export
        del cli, trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if received() is not None and index + 1 < len(spec.stages):  # a signal during the stage's last batch
            _say(f"pipeline {spec.name}: stopping before stage {spec.stages[index + 1].name}; rerun to continue")
            raise Interrupted(received())
    if spec.evaluate is not None and not dry_run and rank_zero:
        assert previous_export is not None
        manifest.data["evaluation"] = _evaluate(spec, previous_export)
        manifest.save()
    return manifest.data


def _interrupted_note(spec: PipelineSpec, stage: StageSpec, run_dir: Path) -> str:
    ckpt = run_dir / RESUME_DIR / ResumeCheckpoint.FILENAME
    then = f"resumes from {ckpt}" if ckpt.exists() else "starts over (no checkpoint was written yet)"
    return (
        f"pipeline {spec.name}: stage {stage.name} interrupted, marked 'interrupted' in "
        f"{spec.output_dir / 'manifest.json'}; rerunning the same command {then}"
    )
