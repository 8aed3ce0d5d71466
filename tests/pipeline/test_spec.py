"""Pipeline files: schema errors name the file and key; every shipped pipeline parses and each stage builds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from lightembed.callbacks import ExportCallback
from lightembed.fit import build_cli
from lightembed.pipeline import PipelineError, ResumeCheckpoint, load_pipeline, stage_argv

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = sorted((ROOT / "configs/pipelines").glob("*.yaml"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.update(stagez=[]), r"unknown key\(s\) \['stagez'\]"),
        (lambda p: p.pop("model"), r"missing required key\(s\) \['model'\]"),
        (lambda p: p["stages"].append(dict(p["stages"][0])), r"repeated: \['s1'\]"),
        (lambda p: p["stages"][0].update(configs=["configs/nope.yaml"]), r"stages\[0\].*configs/nope.yaml.*not found"),
        (lambda p: p["stages"][0]["args"].append("--trainer.default_root_dir=x"), "set by the pipeline"),
        (lambda p: p["stages"][0]["args"].append("--seed_everything=3"), "set by the pipeline"),
        (lambda p: p["stages"][0].update(init_adapter_from_previous=True), "first stage has no previous stage"),
        (lambda p: p["stages"][1].update(args="--trainer.max_steps=2"), r"stages\[1\].*args: expected list"),
        (lambda p: p.update(seed="0"), "seed: expected int"),
    ],
)
def test_schema_errors_name_the_file_and_key(write_pipeline, edit, message, sts_file, tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", "packaged:all-MiniLM-L6-v2", sts_file)
    spec = yaml.safe_load(path.read_text())
    edit(spec)
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(PipelineError, match=message):
        load_pipeline(path)


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda p: p.name)
def test_shipped_pipeline_files_parse_and_every_stage_builds(pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = dataclasses.replace(load_pipeline(pipeline), output_dir=tmp_path / "out")
    previous = None
    for stage in spec.stages:
        # a later stage's input (the previous export) does not exist yet: the pipeline's model stands in for it
        argv = stage_argv(spec, stage, spec.model, previous)
        assert argv[0] == "fit"
        cli = build_cli(argv[1:], run=False)  # run=False parses without subcommands
        assert cli.model is not None and cli.datamodule is not None
        assert Path(cli.trainer.log_dir) == spec.output_dir / stage.name
        assert any(isinstance(c, ResumeCheckpoint) for c in cli.trainer.callbacks)
        assert any(isinstance(c, ExportCallback) for c in cli.trainer.callbacks)
        previous = spec.output_dir / stage.name / "export"


def test_there_are_pipeline_files():
    assert PIPELINES
