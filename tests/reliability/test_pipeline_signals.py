"""SIGTERM and SIGINT end a pipeline stage or a plain ``lightembed fit`` with 128 + signal, a checkpoint and an
``interrupted`` stage (issue 18, item 4). Real subprocesses, tiny models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [
    ROOT / "configs/trainer/cpu.yaml",
    ROOT / "configs/model/cosent_minilm.yaml",
    ROOT / "configs/data/stsb.yaml",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
RESUME = '{"class_path": "lightembed.callbacks.ResumeCheckpoint", "init_args": {"dirpath": "%s"}}'


def fit_args(sts_file: Path) -> list[str]:
    """A CoSENT stage long enough to be interrupted (3 steps per epoch, 500 epochs)."""
    return [
        "--model.init_args.encoder.max_length=32",
        f"--data.init_args.train={sts_file}",
        "--data.init_args.val=" + json.dumps({"tiny": str(sts_file)}),
        "--data.init_args.test=" + json.dumps({"tiny": str(sts_file)}),  # not the config's path under the data root
        "--data.init_args.batch_size=4",
        "--trainer.max_epochs=500",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.precision=32-true",
    ]


def interrupt_when(command: list[str], ready: Path, signum: int, cwd: Path) -> subprocess.CompletedProcess:
    """Start ``command``, send ``signum`` once ``ready`` exists (training is under way), wait for the exit."""
    proc = subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, f"no {ready} after 120 s"
            time.sleep(0.01)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def step(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


def test_sigterm_during_a_pipeline_stage_exits_143_marks_it_interrupted_and_keeps_a_checkpoint(
    tiny_bert_dir, sts_file, tmp_path, capsys, monkeypatch
):
    stage = {"name": "s1", "configs": [str(c) for c in CONFIGS], "args": fit_args(sts_file)}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "model": str(tiny_bert_dir), "seed": 0, "stages": [stage]}))
    out = tmp_path / "out"
    resume = out / "s1" / "resume"
    command = [sys.executable, "-m", "lightembed", "pipeline", str(path), "--output", str(out)]
    done = interrupt_when(command, resume / "last.ckpt", signal.SIGTERM, tmp_path)

    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-3000:]
    assert "lightembed pipeline: interrupted by SIGTERM (exit status 143)" in done.stderr.strip().splitlines()[-1]
    assert "stage s1 interrupted, marked 'interrupted'" in done.stdout
    record = json.loads((out / "manifest.json").read_text())["stages"]["s1"]
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"]
    # saved at the stop (the epoch-end one before it became previous.ckpt), and the rerun resumes from it
    assert step(resume / "last.ckpt") >= step(resume / "previous.ckpt") >= 3
    from lightembed.cli import cli_main

    monkeypatch.chdir(tmp_path)  # where the pipeline ran
    cli_main(["pipeline", str(path), "--output", str(out), "--dry-run"])
    assert "[s1] resume" in capsys.readouterr().out


def test_sigint_during_a_plain_fit_exits_130_after_saving_a_checkpoint(tiny_bert_dir, sts_file, tmp_path):
    resume = tmp_path / "resume"
    command = [sys.executable, "-m", "lightembed", "fit"]
    for config in CONFIGS:
        command += ["--config", str(config)]
    command += fit_args(sts_file) + [
        f"--model.init_args.encoder.backbone={tiny_bert_dir}",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'run'}",
        "--trainer.callbacks+=" + RESUME % resume,
    ]
    done = interrupt_when(command, resume / "last.ckpt", signal.SIGINT, tmp_path)

    assert done.returncode == 128 + signal.SIGINT, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == "lightembed fit: interrupted by SIGINT (exit status 130)"
    assert "Traceback" not in done.stderr
    assert step(resume / "last.ckpt") >= step(resume / "previous.ckpt") >= 3


def test_a_signal_outside_training_exits_with_its_status_too(tmp_path):
    """Before a trainer runs (here: while the command waits), the signal stops the command at once."""
    signum = signal.SIGTERM
    code = (
        "import time\n"
        "from lightembed.interrupts import handle_interrupts\n"
        "with handle_interrupts('fit'):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum
    assert (
        err.decode().strip()
        == f"lightembed fit: interrupted by {signal.Signals(signum).name} (exit status {128 + signum})"
    )
