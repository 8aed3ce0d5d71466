"""lightembed pipeline: stage hand-off, manifest, skip on rerun, clear errors, exact resume after kill -9."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lightembed.callbacks import ExportCallback
from lightembed.cli import build_cli, cli_main
from lightembed.pipeline import (
    LOCK_FILE,
    PipelineError,
    ResumeCheckpoint,
    load_pipeline,
    output_lock,
    stage_argv,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [
    ROOT / "configs/trainer/cpu.yaml",
    ROOT / "configs/model/cosent_minilm.yaml",
    ROOT / "configs/data/stsb.yaml",
]
PIPELINES = sorted((ROOT / "configs/pipelines").glob("*.yaml"))
STEPS_PER_EPOCH = 3  # 12 STS rows, batch size 4


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as in the killed subprocess (OMP_NUM_THREADS=1): CPU sums then agree bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stage_args(sts_file: Path, epochs: int) -> list[str]:
    return [
        "--model.init_args.max_length=32",
        f"--data.init_args.train={sts_file}",
        "--data.init_args.val=" + json.dumps({"tiny": str(sts_file)}),
        "--data.init_args.test=" + json.dumps({"tiny": str(sts_file)}),
        "--data.init_args.batch_size=4",
        f"--trainer.max_epochs={epochs}",
        "--trainer.val_check_interval=1.0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.precision=32-true",
        "--trainer.deterministic=true",
    ]


def write_pipeline(path: Path, model: Path | str, sts_file: Path, epochs=(2, 2), **extra) -> Path:
    """A pipeline file of CoSENT stages s1, s2, ... from the shipped configs, trained on the 12-row STS fixture."""
    stages = [
        {"name": f"s{i + 1}", "configs": [str(c) for c in CONFIGS], "args": stage_args(sts_file, n)}
        for i, n in enumerate(epochs)
    ]
    spec = {"name": "tiny", "model": str(model), "seed": 0, "stages": stages, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def test_two_stages_hand_off_write_the_manifest_and_rerun_only_what_is_missing(
    tiny_bert_dir, sts_file, tmp_path, capsys
):
    out = tmp_path / "out"
    evaluate = {"sts": [f"tiny={sts_file}"]}
    path = write_pipeline(tmp_path / "p.yaml", tiny_bert_dir, sts_file, evaluate=evaluate)
    cli_main(["pipeline", str(path), "--output", str(out)])
    assert "| tiny | 12 |" in capsys.readouterr().out

    m = manifest(out)
    s1, s2 = m["stages"]["s1"], m["stages"]["s2"]
    assert (s1["status"], s2["status"]) == ("done", "done")
    assert s1["input_model"] == str(tiny_bert_dir)
    assert s1["output"] == str(out / "s1" / "export")
    assert s2["input_model"] == s1["output"]  # the hand-off
    assert s2["config"]["model"]["init_args"]["model"] == s1["output"]  # what LightningCLI actually used
    for name, stage in m["stages"].items():
        run = out / name  # the run folder is exactly <output>/<stage>
        assert (run / "export" / "lightembed.json").is_file() and (run / "export" / "model.safetensors").is_file()
        assert (run / "resume" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
        assert stage["config_file"] == str(run / "config.yaml")
        assert stage["steps"] == 2 * STEPS_PER_EPOCH
        assert stage["seed"] == 0 and stage["resumed_from"] is None
        assert stage["git_commit"] is None or len(stage["git_commit"]) == 40
        assert isinstance(stage["metrics"]["val/spearman_mean"], float)  # end of fit
        assert isinstance(stage["metrics"]["test/tiny_spearman"], float)  # the test pass after fit
        assert stage["wall_time_s"] > 0
        train = stage["data"]["train"]["files"][0]
        assert train["sha256"] == hashlib.sha256(sts_file.read_bytes()).hexdigest()
        assert stage["data"]["val"]["tiny"]["files"][0]["sha256"] == train["sha256"]
    assert -100 <= m["evaluation"]["sts"]["tiny"]["spearman"] <= 100
    assert m["evaluation"]["model"] == s2["output"]

    # rerun: both stages are skipped, nothing is rewritten
    stamp = (out / "s2" / "export" / "lightembed.json").stat().st_mtime_ns
    cli_main(["pipeline", str(path), "--output", str(out)])
    assert capsys.readouterr().out.count("is done, skipping") == 2
    assert manifest(out)["stages"] == m["stages"]
    assert (out / "s2" / "export" / "lightembed.json").stat().st_mtime_ns == stamp

    # a deleted export is made again: stage 2 resumes from its final checkpoint and only exports
    final = weights(out / "s2" / "export")
    for file in (out / "s2" / "export").rglob("*"):
        if file.is_file():
            file.unlink()
    cli_main(["pipeline", str(path), "--output", str(out)])
    again = manifest(out)["stages"]
    assert again["s1"] == s1
    assert again["s2"]["status"] == "done" and again["s2"]["resumed_from"] == str(out / "s2/resume/last.ckpt")
    assert again["s2"]["steps"] == s2["steps"]
    for key, value in weights(out / "s2" / "export").items():
        torch.testing.assert_close(value, final[key], atol=0, rtol=0)


def test_missing_input_model_names_the_stage_and_the_path(sts_file, tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", tmp_path / "nowhere", sts_file)
    with pytest.raises(FileNotFoundError, match=r"stage 's1'.*nowhere"):
        cli_main(["pipeline", str(path), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_init_adapter_from_previous_needs_the_previous_adapter_folder(tiny_bert_dir, sts_file, tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", tiny_bert_dir, sts_file, epochs=(1, 1))
    spec = yaml.safe_load(path.read_text())
    spec["stages"][1]["init_adapter_from_previous"] = True
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"stage 's2'.*s1/export/adapter"):
        cli_main(["pipeline", str(path), "--output", str(out)])
    stages = manifest(out)["stages"]
    assert stages["s1"]["status"] == "done" and stages["s2"]["status"] == "pending"


def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(PipelineError, match="in use by another pipeline run"):
            with output_lock(out):
                pass
    assert not (out / LOCK_FILE).exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    with output_lock(out):  # the lock of a process that is gone (kill -9) is taken over
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()


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
def test_schema_errors_name_the_file_and_key(edit, message, sts_file, tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", "packaged:all-MiniLM-L6-v2", sts_file)
    spec = yaml.safe_load(path.read_text())
    edit(spec)
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(PipelineError, match=message):
        load_pipeline(path)


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_bert_dir, sts_file, tmp_path, capsys):
    path = write_pipeline(tmp_path / "p.yaml", tiny_bert_dir, sts_file)
    out = tmp_path / "out"
    cli_main(["pipeline", str(path), "--output", str(out), "--dry-run"])
    printed = capsys.readouterr().out
    assert "[s1] run" in printed and "[s2] run" in printed
    assert f"--model.init_args.model {out / 's1' / 'export'}" in printed  # stage 2 reads stage 1's export
    assert not out.exists()


def test_killed_pipeline_resumes_to_the_same_weights(tiny_bert_dir, sts_file, tmp_path):
    """kill -9 after stage 1's first epoch-end checkpoint, rerun: the final weights equal an uninterrupted run's."""
    path = write_pipeline(tmp_path / "p.yaml", tiny_bert_dir, sts_file, epochs=(16, 2))
    out = tmp_path / "killed"
    ckpt = out / "s1" / "resume" / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "lightembed", "pipeline", str(path), "--output", str(out)]
    log = tmp_path / "killed.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not ckpt.is_file():
                assert proc.poll() is None, f"pipeline exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no checkpoint after 120 s"
                if (out / "manifest.json").is_file():  # never 'done' while the export is incomplete
                    assert manifest(out)["stages"]["s1"]["status"] != "done"
                time.sleep(0.005)
        finally:
            proc.kill()  # SIGKILL: no cleanup runs
            proc.wait()
    stages = manifest(out)["stages"]
    assert stages["s1"]["status"] == "running" and stages["s2"]["status"] == "pending"
    assert not (out / "s1" / "export" / "lightembed.json").is_file()
    killed_at = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < killed_at < 16 * STEPS_PER_EPOCH and killed_at % STEPS_PER_EPOCH == 0  # an epoch boundary

    cli_main(["pipeline", str(path), "--output", str(out)])
    stages = manifest(out)["stages"]
    assert stages["s1"]["resumed_from"] == str(ckpt)
    assert (stages["s1"]["status"], stages["s2"]["status"]) == ("done", "done")
    assert stages["s1"]["steps"] == 16 * STEPS_PER_EPOCH

    reference = tmp_path / "reference"
    cli_main(["pipeline", str(path), "--output", str(reference)])
    for stage in ("s1", "s2"):
        expected = weights(reference / stage / "export")
        resumed = weights(out / stage / "export")
        assert resumed.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(resumed[key], expected[key], atol=1e-6, rtol=0)


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
