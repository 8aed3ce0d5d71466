"""lightembed pipeline: stage hand-off, manifest, skip on rerun, clear errors, exact resume after kill -9."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lightembed.cli import cli_main
from lightembed.fit import BACKBONE_OPTION, option_value

STEPS_PER_EPOCH = 3  # 12 STS rows, batch size 4


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as in the killed subprocess (OMP_NUM_THREADS=1): CPU sums then agree bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def test_two_stages_hand_off_write_the_manifest_and_rerun_only_what_is_missing(
    write_pipeline, tiny_bert_dir, sts_file, tmp_path, capsys
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
    assert option_value(s2["config"], BACKBONE_OPTION) == s1["output"]  # what LightningCLI actually used
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


def test_missing_input_model_names_the_stage_and_the_path(write_pipeline, sts_file, tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", tmp_path / "nowhere", sts_file)
    with pytest.raises(FileNotFoundError, match=r"stage 's1'.*nowhere"):
        cli_main(["pipeline", str(path), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_init_adapter_from_previous_needs_the_previous_adapter_folder(
    write_pipeline, tiny_bert_dir, sts_file, tmp_path
):
    path = write_pipeline(tmp_path / "p.yaml", tiny_bert_dir, sts_file, epochs=(1, 1))
    spec = yaml.safe_load(path.read_text())
    spec["stages"][1]["init_adapter_from_previous"] = True
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"stage 's2'.*s1/export/adapter"):
        cli_main(["pipeline", str(path), "--output", str(out)])
    stages = manifest(out)["stages"]
    assert stages["s1"]["status"] == "done" and stages["s2"]["status"] == "pending"


def test_dry_run_prints_the_plan_and_writes_nothing(write_pipeline, tiny_bert_dir, sts_file, tmp_path, capsys):
    path = write_pipeline(tmp_path / "p.yaml", tiny_bert_dir, sts_file)
    out = tmp_path / "out"
    cli_main(["pipeline", str(path), "--output", str(out), "--dry-run"])
    printed = capsys.readouterr().out
    assert "[s1] run" in printed and "[s2] run" in printed
    assert f"--{BACKBONE_OPTION} {out / 's1' / 'export'}" in printed  # stage 2 reads stage 1's export
    assert not out.exists()


def test_killed_pipeline_resumes_to_the_same_weights(write_pipeline, tiny_bert_dir, sts_file, tmp_path):
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


def test_each_stage_releases_its_model_before_the_next_starts(
    write_pipeline, tiny_bert_dir, sts_file, tmp_path, monkeypatch
):
    """Stages run in one process: a stage's module, trainer and optimizer must be garbage once it is done, or a long
    chain (an ablation's arms) holds every model it trained until it runs out of memory."""
    import gc
    import weakref

    from lightembed.pipeline import runner

    alive_at_start: list[list[str]] = []
    refs: dict[str, list[weakref.ref]] = {}
    real = runner._run_stage

    def tracking(argv: list[str], stage: str):
        gc.collect()
        alive_at_start.append([name for name, rs in refs.items() if any(r() is not None for r in rs)])
        cli = real(argv, stage)
        optimizers = list(cli.trainer.optimizers)
        refs[stage] = [weakref.ref(o) for o in (cli.model, cli.trainer, cli.datamodule, *optimizers)]
        refs[stage].append(weakref.ref(cli.model.encoder.backbone))
        return cli

    monkeypatch.setattr(runner, "_run_stage", tracking)
    path = write_pipeline(tmp_path / "p.yaml", tiny_bert_dir, sts_file, epochs=(1, 1, 1))
    cli_main(["pipeline", str(path), "--output", str(tmp_path / "out")])
    gc.collect()
    assert alive_at_start == [[], [], []]
    assert [name for name, rs in refs.items() if any(r() is not None for r in rs)] == []
