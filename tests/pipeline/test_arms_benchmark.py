"""benchmarks/llm2vec_ablation.py end to end on a tiny random Llama and tiny data: the five arms over the shipped
stage configs, MNTP trained once for two arms, a kill after the first arm resumed, and the results file's shape."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightembed.pipeline import runner

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = ROOT / "benchmarks" / "llm2vec_ablation.py"
SHIPPED = ROOT / "configs" / "pipelines" / "llm2vec_ablation.yaml"
NLI = ROOT / "tests" / "fixtures" / "nli_tiny.jsonl"
TRAINER = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.check_val_every_n_epoch=1",
    "--trainer.val_check_interval=1.0",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.precision=32-true",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.batch_size=4",
    "--data.init_args.eval_batch_size=8",
]


def tiny_ablation(path: Path, model: Path, corpus: Path, sts: Path) -> Path:
    """The shipped ablation pipeline (same pool, arms and stage configs) on a tiny model and the test files."""
    spec = yaml.safe_load(SHIPPED.read_text())
    data = {
        "mntp": [f"--data.init_args.train={corpus}", f"--data.init_args.val={corpus}"],
        "simcse": [f"--data.init_args.train={NLI}"],
        "supervised": [f"--data.init_args.train={NLI}", "--data.init_args.val=" + json.dumps({"stsb": str(sts)})],
    }
    for stage in spec["stages"]:
        stage["configs"] = [str(ROOT / c) for c in stage["configs"]]
        kind = "supervised" if stage["name"].startswith("supervised") else stage["name"]
        sts_val = [] if kind == "supervised" else ["--data.init_args.sts_val=" + json.dumps({"stsb": str(sts)})]
        tiny = [*TRAINER, *data[kind], *sts_val, "--model.init_args.encoder.max_length=16"]
        stage["args"] = [*stage.get("args", []), *tiny]
    spec["model"] = str(model)
    spec["evaluate"] = {"sts": [f"stsb_test={sts}"], "batch_size": 8}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def load_benchmark():
    module_spec = importlib.util.spec_from_file_location("llm2vec_ablation_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_ablation_benchmark_shares_mntp_resumes_after_a_kill_and_writes_the_table(
    tiny_llama_dir, corpus_file, sts_file, tmp_path, monkeypatch
):
    pipeline = tiny_ablation(tmp_path / "ablation.yaml", tiny_llama_dir, corpus_file, sts_file)
    out, results = tmp_path / "out", tmp_path / "results.json"
    argv = ["--pipeline", str(pipeline), "--output", str(out), "--data-root", str(tmp_path)]
    argv += ["--results", str(results), "--threads", "1"]

    # first run in a subprocess, killed (SIGKILL: nothing cleans up) once the first arm is done
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = tmp_path / "killed.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, str(BENCHMARK), *argv], env=env, stdout=sink, stderr=sink)
        try:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, f"benchmark exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"first arm not done after 180 s:\n{log.read_text()[-3000:]}"
                top = out / "manifest.json"
                if top.is_file() and json.loads(top.read_text())["arms"]["causal"]["status"] == "done":
                    break
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    first = json.loads((out / "manifest.json").read_text())["arms"]["causal"]
    assert not results.exists()

    trained: list[str] = []
    real = runner._run_stage

    def counting(stage_argv: list[str], stage: str):
        trained.append(next(a.split("=", 1)[1] for a in stage_argv if a.startswith("--trainer.default_root_dir=")))
        return real(stage_argv, stage)

    monkeypatch.setattr(runner, "_run_stage", counting)
    threads = torch.get_num_threads()
    try:
        result = load_benchmark().main(argv)
    finally:
        torch.set_num_threads(threads)

    arms = out / "arms"
    assert str(arms / "causal" / "supervised_causal") not in trained  # the finished arm was not trained again
    assert str(arms / "mntp_simcse" / "mntp") not in trained
    assert not (arms / "mntp_simcse" / "mntp").exists()  # MNTP trained once, in the mntp arm
    runs = sorted(p.parent.relative_to(arms) for p in arms.glob("*/*/config.yaml") if ".stale-" not in p.parent.name)
    assert [str(r) for r in runs] == [
        "bidirectional/supervised",
        "causal/supervised_causal",
        "mntp/mntp",
        "mntp/supervised",
        "mntp_simcse/simcse",
        "mntp_simcse/supervised",
        "simcse_only/simcse",
        "simcse_only/supervised",
    ]
    reused = json.loads((arms / "mntp_simcse" / "manifest.json").read_text())["stages"]["mntp"]["reused_from"]
    assert reused["arm"] == "mntp" and reused["stage"] == "mntp"
    top = json.loads((out / "manifest.json").read_text())
    assert top["arms"]["causal"]["evaluation"] == first["evaluation"]  # scored before the kill, kept

    written = json.loads(results.read_text())
    assert written == json.loads(json.dumps(result))
    assert set(written["arms"]) == {"causal", "bidirectional", "mntp", "simcse_only", "mntp_simcse"}
    for name, arm in written["arms"].items():
        for key in ("unsupervised_stsb", "supervised_stsb", "seconds"):
            assert isinstance(arm[key], float), (name, key)
        assert -100 <= arm["unsupervised_stsb"] <= 100 and -100 <= arm["supervised_stsb"] <= 100, name
        assert arm["seconds"] == pytest.approx(arm["seconds_trained"] + arm["seconds_reused"], abs=0.01)
        assert arm["seconds"] > 0
    mntp_arm = top["arms"]["mntp"]
    mntp_seconds = mntp_arm["seconds_trained"] - mntp_arm["stages"]["supervised"]["wall_time_s"]
    assert written["arms"]["mntp_simcse"]["reused"] == {"mntp": "mntp/mntp"}
    assert written["arms"]["mntp_simcse"]["seconds_reused"] == pytest.approx(mntp_seconds, abs=0.01)
    # the unsupervised score of the causal and bidirectional arms is the base model, embedded causal / bidirectional
    causal, bidirectional = (top["arms"][a]["evaluation"]["last_stage_input"] for a in ("causal", "bidirectional"))
    assert causal["model"] == bidirectional["model"] == str(tiny_llama_dir)
    assert causal["settings"]["bidirectional"] is False and bidirectional["settings"]["bidirectional"] is True
    assert causal["sts"] != bidirectional["sts"]
    assert set(written["env"]) >= {"torch", "lightning", "python", "threads", "cpu", "precision"}
    assert written["env"]["precision"] == ["32-true"]
