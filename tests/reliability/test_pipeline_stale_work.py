"""The pipeline never trusts stale work: changed inputs, a damaged export or a corrupt checkpoint redo what they
touch, say so, and never resume a stage on inputs that changed under it (issue 18, items 2, 5, 7, and the
shell-quoted --dry-run of issue 19)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from lightembed.cli import cli_main
from lightembed.pipeline import PipelineError, load_pipeline, stage_argv

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [
    ROOT / "configs/trainer/cpu.yaml",
    ROOT / "configs/model/cosent_minilm.yaml",
    ROOT / "configs/data/stsb.yaml",
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_pipeline(path: Path, model: Path, sts_file: Path, epochs: tuple[int, ...] = (1, 1)) -> Path:
    """Stages s1, s2, ... of CoSENT on the 12-row STS fixture (3 steps per epoch), from the shipped configs."""
    args = [
        "--model.init_args.encoder.max_length=32",
        f"--data.init_args.train={sts_file}",
        "--data.init_args.val=" + json.dumps({"tiny": str(sts_file)}),
        "--data.init_args.test=" + json.dumps({"tiny": str(sts_file)}),
        "--data.init_args.batch_size=4",
        "--trainer.val_check_interval=1.0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.precision=32-true",
    ]
    stages = [
        {"name": f"s{i + 1}", "configs": [str(c) for c in CONFIGS], "args": [*args, f"--trainer.max_epochs={n}"]}
        for i, n in enumerate(epochs)
    ]
    path.write_text(yaml.safe_dump({"name": "tiny", "model": str(model), "seed": 0, "stages": stages}))
    return path


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def pipeline(path: Path, out: Path, *extra: str) -> None:
    cli_main(["pipeline", str(path), "--output", str(out), *extra])


def test_changed_training_data_or_input_weights_rerun_the_stage_and_those_after(
    tiny_bert_dir, sts_file, tmp_path, capsys
):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    path, out = write_pipeline(tmp_path / "p.yaml", model, sts_file), tmp_path / "out"
    pipeline(path, out)
    first = manifest(out)["stages"]
    capsys.readouterr()

    # the same path, other rows: both stages train again and the manifest holds the new hash
    sts_file.write_text("\n".join(reversed(sts_file.read_text().splitlines())) + "\n")
    pipeline(path, out)
    printed = capsys.readouterr().out
    assert "is done, skipping" not in printed
    assert f"data train: {sts_file} (content changed)" in printed
    second = manifest(out)["stages"]
    assert second["s1"]["data"]["train"]["files"][0]["sha256"] != first["s1"]["data"]["train"]["files"][0]["sha256"]
    assert second["s2"]["started_at"] >= second["s1"]["finished_at"]

    # other weights saved into the input folder: the first stage (and so the second) trains again
    weights = load_file(model / "model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, model / "model.safetensors", metadata={"format": "pt"})
    pipeline(path, out)
    printed = capsys.readouterr().out
    assert "is done, skipping" not in printed
    assert "the content of its input model" in printed and "model.safetensors" in printed

    pipeline(path, out)  # nothing changed: both skipped
    assert capsys.readouterr().out.count("is done, skipping") == 2


def test_an_interrupted_stage_is_not_resumed_on_changed_data(tiny_bert_dir, sts_file, tmp_path, capsys):
    path, out = write_pipeline(tmp_path / "p.yaml", tiny_bert_dir, sts_file, epochs=(2,)), tmp_path / "out"
    pipeline(path, out)
    state = manifest(out)
    state["stages"]["s1"]["status"] = "interrupted"  # what a SIGTERM after the first epoch leaves
    (out / "manifest.json").write_text(json.dumps(state))
    sts_file.write_text(sts_file.read_text().replace("guitar", "violin"))

    with pytest.raises(
        PipelineError,
        match=r"interrupted and its inputs changed since \(.*data train: .*sts.jsonl \(content changed\).*--restart s1",
    ):
        pipeline(path, out)
    assert manifest(out)["stages"]["s1"]["status"] == "interrupted"  # nothing was touched

    capsys.readouterr()
    pipeline(path, out, "--restart", "s1")
    assert "s1 starts over (--restart); old run folder moved to" in capsys.readouterr().out
    assert manifest(out)["stages"]["s1"]["status"] == "done"
    assert len(list(tmp_path.glob("out/s1.stale-*"))) == 1  # moved aside, not deleted
    with pytest.raises(PipelineError, match=r"--restart 'nope': pipeline 'tiny' has no such stage"):
        pipeline(path, out, "--restart", "nope")


@pytest.mark.parametrize("damage", ["delete", "overwrite"])
def test_a_done_stage_whose_export_lost_or_changed_a_file_is_redone_with_the_stages_after(
    damage, tiny_bert_dir, sts_file, tmp_path, capsys
):
    path, out = write_pipeline(tmp_path / "p.yaml", tiny_bert_dir, sts_file), tmp_path / "out"
    pipeline(path, out)
    weights = out / "s1" / "export" / "model.safetensors"
    recorded = manifest(out)["stages"]["s1"]["export_files"]
    assert set(recorded) >= {"model.safetensors", "lightembed.json"}
    if damage == "delete":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:-10] + b"\0" * 10)
    capsys.readouterr()
    pipeline(path, out)
    printed = capsys.readouterr().out
    assert "is done, skipping" not in printed
    assert f"model.safetensors {'is missing' if damage == 'delete' else 'changed'}" in printed
    stages = manifest(out)["stages"]
    assert stages["s1"]["resumed_from"] == str(out / "s1/resume/last.ckpt")  # exported again from its final state
    assert stages["s1"]["export_files"]["model.safetensors"] == recorded["model.safetensors"]  # the same weights
    assert stages["s2"]["resumed_from"] is None and stages["s2"]["status"] == "done"  # retrained after it


def test_a_corrupt_last_checkpoint_is_named_moved_aside_and_the_previous_one_used(
    tiny_bert_dir, sts_file, tmp_path, capsys
):
    path, out = write_pipeline(tmp_path / "p.yaml", tiny_bert_dir, sts_file, epochs=(2,)), tmp_path / "out"
    pipeline(path, out)
    resume = out / "s1" / "resume"
    assert torch.load(resume / "previous.ckpt", weights_only=False)["global_step"] == 3  # the epoch before
    last = resume / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated, as after a full disk
    (out / "s1" / "export" / "lightembed.json").unlink()  # so the stage must resume
    capsys.readouterr()

    pipeline(path, out)
    printed = capsys.readouterr().out
    assert f"checkpoint {last} is unreadable" in printed and "trying the previous checkpoint" in printed
    aside = list(resume.glob("last.ckpt.corrupt-*"))
    assert len(aside) == 1 and aside[0].stat().st_size > 0  # kept for inspection
    record = manifest(out)["stages"]["s1"]
    assert record["status"] == "done" and record["resumed_from"] == str(resume / "previous.ckpt")
    assert record["steps"] == 6  # the last epoch trained again

    # both unreadable: the stage starts from its beginning, and says so
    for name in ("last.ckpt", "previous.ckpt"):
        (resume / name).write_bytes(b"not a checkpoint")
    (out / "s1" / "export" / "lightembed.json").unlink()
    pipeline(path, out)
    printed = capsys.readouterr().out
    assert printed.count("is unreadable") == 2 and "stage s1 starts" in printed
    assert manifest(out)["stages"]["s1"]["resumed_from"] is None


def test_dry_run_prints_commands_a_shell_gives_back_as_the_same_argv(tiny_bert_dir, sts_file, tmp_path, capsys):
    out = tmp_path / "out dir's"  # a space and a quote: an unquoted join breaks both
    path = write_pipeline(tmp_path / "p.yaml", tiny_bert_dir, sts_file)
    pipeline(path, out, "--dry-run")
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("lightembed ")]
    spec = load_pipeline(path, out)
    s1 = spec.stages[0]
    expected = ["lightembed", *stage_argv(spec, s1, str(tiny_bert_dir), None)]
    assert len(lines) == 2 and shlex.split(lines[0]) == expected
    # through a real shell: printf gets the words bash makes of the printed line
    words = subprocess.run(
        ["bash", "-c", "printf '%s\\0' " + lines[0].removeprefix("lightembed ")], capture_output=True, check=True
    ).stdout.split(b"\0")[:-1]
    assert [w.decode() for w in words] == expected[1:]
    assert any("--trainer.callbacks+=" in w and "ResumeCheckpoint" in w for w in expected)
