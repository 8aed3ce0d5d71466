"""Ablation arms: several chains over one pool of stages, each stage trained once per distinct input.

Each arm is run as a linear pipeline (:func:`~lightembed.pipeline.spec.arm_pipeline`) in ``<output_dir>/arms/<arm>``
by the stage loop of :mod:`lightembed.pipeline.runner`, which asks :class:`SharedStages` before training a stage: a
done stage of an earlier arm with the same fingerprint (configs as parsed, args, seed, input model files, data) is
the same computation, so its record is taken over with ``reused_from`` naming it and ``output`` pointing at its export
(referenced, never copied or linked: moving a run folder aside cannot touch another arm's files). After each arm
the final export and the input of the arm's last stage (embedded as that stage embeds it) are scored on the
``evaluate`` sets. See :mod:`lightembed.pipeline` for the file format and the folder layout.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lightembed.encoder import Encoder, EncoderSettings, TextEncoder
from lightembed.interrupts import Interrupted, interrupt_signal, received
from lightembed.pipeline.inputs import model_record
from lightembed.pipeline.manifest import FORMAT_VERSION, MANIFEST_FILE, export_problems, now, write_json_atomic
from lightembed.pipeline.spec import EvaluateSpec, PipelineError, PipelineSpec, arm_pipeline
from lightembed.provenance import bytes_sha256

ENCODER_OPTIONS = ("pooling", "max_length", "bidirectional", "layers")
"""The encoder settings of a stage's config that decide how it embeds its input (the rest, such as LoRA, dropout
and dtype, only concern training)."""


@dataclass
class _Done:
    arm: str
    stage: str
    record: dict[str, Any]
    fresh: bool  # trained (or planned, in a dry run) by this invocation


class SharedStages:
    """The stages the arms run so far have finished, by fingerprint; the stage loop asks it before training."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.arm = ""  # the arm being run, set by :func:`run_arms`
        self._done: dict[str, _Done] = {}

    def add(self, stage: str, fingerprint: str, record: Mapping[str, Any], fresh: bool) -> None:
        """Offer a finished (or, in a dry run, planned) stage of the current arm to the arms after it."""
        origin = record.get("reused_from")
        if origin:  # offered as the original, so that a reuse of a reuse still names where the stage ran
            original = {k: v for k, v in record.items() if k not in ("reused_from", "reused_at")}
            self._done.setdefault(fingerprint, _Done(origin["arm"], origin["stage"], original, fresh))
        else:
            self._done.setdefault(fingerprint, _Done(self.arm, stage, dict(record), fresh))

    def reuse(
        self, stage: str, record: Mapping[str, Any], fingerprint: str, upstream_ran: bool, restart: bool
    ) -> tuple[dict[str, Any], bool] | None:
        """The record this arm takes over for ``stage`` and whether that stage ran in this invocation, or None.

        None when the arm's own record is done, unchanged and intact (the loop skips it as usual) or no earlier arm
        finished a stage with this fingerprint. Under ``--restart`` only a stage trained by this invocation counts.
        """
        own_done = record.get("status") == "done" and record.get("fingerprint") == fingerprint
        if own_done and not (upstream_ran or restart) and not export_problems(record):
            return None
        found = self._done.get(fingerprint)
        if found is None or (restart and not found.fresh):
            return None
        if not self.dry_run and export_problems(found.record):
            return None
        origin = {"arm": found.arm, "stage": found.stage, "run_dir": found.record.get("run_dir")}
        return {**found.record, "reused_from": origin, "reused_at": now()}, found.fresh


ChainRunner = Callable[[PipelineSpec, bool, str | None, SharedStages], dict]
"""The linear stage loop: ``(spec, dry_run, restart, shared) -> manifest``."""


def sts_record(ev: EvaluateSpec, encoder: TextEncoder, model: str) -> dict[str, Any]:
    """STS of ``encoder`` on the ``evaluate`` sets, printed and returned as the manifest records it."""
    from lightembed.data.sources import source_fingerprint
    from lightembed.evaluation.sts import evaluate_sts, format_table, parse_named_sources

    sources = parse_named_sources(list(ev.sts), ev.split)
    results = evaluate_sts(
        encoder, sources, split=ev.split, data_root=ev.data_root, batch_size=ev.batch_size, instruction=ev.instruction
    )
    print(f"STS of {model}\n{format_table(results)}", flush=True)
    return {
        "model": model,
        "split": ev.split,
        "instruction": ev.instruction,
        "sts": {r.name: r.to_dict() for r in results},
        "data": {name: source_fingerprint(src, ev.split, ev.data_root) for name, src in sources.items()},
        "finished_at": now(),
    }


def stage_encoder_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """How a done stage embedded its input: :data:`ENCODER_OPTIONS` of the ``model.init_args.encoder`` of the
    config it ran with (``{}`` when its model has no encoder settings)."""
    init = ((record.get("config") or {}).get("model") or {}).get("init_args") or {}
    encoder = init.get("encoder") or {}
    return {k: encoder[k] for k in ENCODER_OPTIONS if encoder.get(k) is not None}


def _evaluation(old: Mapping[str, Any] | None, ev: EvaluateSpec, model: str, settings: dict[str, Any]) -> dict:
    """The STS record of ``model`` embedded with ``settings`` (from the folder's own when empty); the recorded one
    when neither the model's files, the settings nor the ``evaluate`` block changed."""
    key = {"model": model_record(model), "settings": settings, "evaluate": dataclasses.asdict(ev)}
    fingerprint = bytes_sha256(json.dumps(key, sort_keys=True, default=str).encode())
    if old and old.get("fingerprint") == fingerprint:
        return dict(old)
    if settings:
        encoder = Encoder(EncoderSettings(backbone=model, **settings))
        encoder.build()
        encoder.eval()
    else:
        from lightembed.api import load_encoder

        encoder = load_encoder(model)
    return {**sts_record(ev, encoder, model), "settings": settings, "fingerprint": fingerprint}


def _arm_summary(stages: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Per stage: status, export, whether it was reused and its wall time; ``seconds`` = trained + reused."""
    records = {name: stages.get(name) or {"status": "pending"} for name in names}
    trained = {n: r.get("wall_time_s") or 0.0 for n, r in records.items() if not r.get("reused_from")}
    reused = {n: r.get("wall_time_s") or 0.0 for n, r in records.items() if r.get("reused_from")}
    return {
        "stages": {
            n: {k: r.get(k) for k in ("status", "output", "wall_time_s", "reused_from")} for n, r in records.items()
        },
        "seconds": round(sum(trained.values()) + sum(reused.values()), 3),
        "seconds_trained": round(sum(trained.values()), 3),
        "seconds_reused": round(sum(reused.values()), 3),
        "reused": {n: "{arm}/{stage}".format(**records[n]["reused_from"]) for n in reused},
    }


class ArmsManifest:
    """``<output_dir>/manifest.json`` of an arms pipeline: one entry per arm (stages, seconds, evaluation); each
    arm's stage records are in ``<output_dir>/arms/<arm>/manifest.json``."""

    def __init__(self, spec: PipelineSpec, write: bool) -> None:
        self.path = spec.output_dir / MANIFEST_FILE
        self.write_enabled = write
        old: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if old.get("name") not in (None, spec.name):
            raise PipelineError(
                f"{self.path} belongs to pipeline {old.get('name')!r}, not {spec.name!r}; choose another --output"
            )
        old_arms = old.get("arms") or {}
        self.data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": spec.name,
            "pipeline_file": str(spec.source) if spec.source else None,
            "pipeline_sha256": bytes_sha256(spec.source.read_bytes()) if spec.source else None,
            "output_dir": str(spec.output_dir),
            "model": spec.model,
            "seed": spec.seed,
            "updated_at": now(),
            "arms": {
                arm.name: {
                    "chain": list(arm.stages),
                    "run_dir": str(arm_pipeline(spec, arm).output_dir),
                    "status": (old_arms.get(arm.name) or {}).get("status", "pending"),
                    "evaluation": (old_arms.get(arm.name) or {}).get("evaluation") or {},
                }
                for arm in spec.arms
            },
        }

    def save(self) -> None:
        if self.write_enabled:
            self.data["updated_at"] = now()
            write_json_atomic(self.path, self.data)


def run_arms(spec: PipelineSpec, dry_run: bool, restart: str | None, run_chain: ChainRunner, rank_zero: bool) -> dict:
    """Run every arm in order through ``run_chain``, sharing equal stages, then score it; returns the manifest."""
    manifest = ArmsManifest(spec, write=rank_zero and not dry_run)
    shared = SharedStages(dry_run)
    for index, arm in enumerate(spec.arms):
        shared.arm = arm.name
        entry = manifest.data["arms"][arm.name]
        if dry_run:
            print(f"arm {arm.name}: {' -> '.join(arm.stages)}", flush=True)
        entry["status"] = "running"
        manifest.save()
        try:
            chain = run_chain(arm_pipeline(spec, arm), dry_run, restart if restart in arm.stages else None, shared)
        except BaseException as err:
            entry["status"] = "interrupted" if interrupt_signal(err) is not None else "failed"
            manifest.save()
            raise
        entry.update(_arm_summary(chain["stages"], arm.stages))
        if spec.evaluate is not None and not dry_run and rank_zero:
            last = chain["stages"][arm.stages[-1]]
            old = entry.get("evaluation") or {}
            entry["evaluation"] = {
                "final": _evaluation(old.get("final"), spec.evaluate, last["output"], {}),
                "last_stage_input": _evaluation(
                    old.get("last_stage_input"), spec.evaluate, last["input_model"], stage_encoder_settings(last)
                ),
            }
        entry["status"] = "done"
        manifest.save()
        if received() is not None and index + 1 < len(spec.arms):  # a signal during the arm's last batch
            print(f"pipeline {spec.name}: stopping before arm {spec.arms[index + 1].name}; rerun to continue")
            raise Interrupted(received())
    return manifest.data
