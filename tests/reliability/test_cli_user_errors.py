"""A user error ends a command with one line naming the cause and a non-zero status; bugs keep their traceback.

Each case runs :func:`lightembed.cli.main` (what ``lightembed`` runs) in this process on a tiny model; one case runs
the real command in a subprocess to check what a terminal shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Lightning's log handler keeps the sys.stderr of its import: import it now, not under a test's captured stderr
# (lightembed.cli itself no longer imports Lightning)
import lightning.pytorch  # noqa: F401
import pytest

from lightembed.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["trainer/cpu.yaml", "model/angle_minilm.yaml", "data/stsb.yaml"]


def fit_args(model_dir: Path, train: Path, *extra: str) -> list[str]:
    """``lightembed fit`` on the shipped configs, a tiny model and a small file (the error comes before training)."""
    return [
        "fit",
        *(arg for name in CONFIGS for arg in ("--config", str(ROOT / "configs" / name))),
        *("--model.init_args.encoder.backbone", str(model_dir), "--data.init_args.train", str(train)),
        *("--data.init_args.val", json.dumps({"tiny": str(train)}), "--data.init_args.test", "{}"),
        *("--trainer.max_steps", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"),
        *extra,
    ]


def one_line_error(capsys: pytest.CaptureFixture[str], status: int) -> str:
    err = capsys.readouterr().err
    assert status != 0
    assert "Traceback" not in err and "Does not validate" not in err and "Given value" not in err
    lines = err.strip().splitlines()  # Lightning's own log lines ("Seed set to 0") may come first
    assert lines[-1].startswith("lightembed fit: error: "), err
    assert sum("error" in line.lower() for line in lines) == 1, err
    return lines[-1]


def test_missing_model_folder_is_one_line_naming_it(sts_file, tmp_path, capsys):
    line = one_line_error(capsys, main(fit_args(tmp_path / "nowhere", sts_file)))
    assert str(tmp_path / "nowhere") in line


def test_bad_lora_rank_is_one_line(tiny_bert_dir, sts_file, capsys):
    line = one_line_error(capsys, main(fit_args(tiny_bert_dir, sts_file, "--model.init_args.encoder.lora.r", "-1")))
    assert "rank" in line and "-1" in line


def test_bad_temperature_is_one_line(tiny_bert_dir, sts_file, capsys):
    status = main(fit_args(tiny_bert_dir, sts_file, "--model.init_args.loss.init_args.cosine_temperature", "-1"))
    assert "cosine_temperature" in one_line_error(capsys, status)


def test_missing_data_file_is_one_line_naming_it(tiny_bert_dir, tmp_path, capsys):
    missing = tmp_path / "absent.jsonl"
    assert str(missing) in one_line_error(capsys, main(fit_args(tiny_bert_dir, missing)))


def test_bad_data_is_one_line_naming_the_file(tiny_bert_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "no sentence columns"}) + "\n")
    assert str(bad) in one_line_error(capsys, main(fit_args(tiny_bert_dir, bad)))


def test_stage_class_typo_and_unknown_option_are_one_line_with_status_2(tiny_bert_dir, sts_file, capsys):
    status = main(fit_args(tiny_bert_dir, sts_file, "--model", "lightembed.stages.ContrastiveModul"))
    assert status == 2 and "ContrastiveModul" in one_line_error(capsys, status)
    status = main(fit_args(tiny_bert_dir, sts_file, "--trainer.max_stepz", "3"))
    assert status == 2 and "--trainer.max_stepz" in one_line_error(capsys, status)


def test_missing_hub_model_offline_names_the_model_id(sts_file, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = one_line_error(capsys, main(fit_args(Path("lightembed-tests/no-such-model"), sts_file)))
    assert "'lightembed-tests/no-such-model'" in line


def test_debug_variable_shows_the_traceback(tiny_bert_dir, sts_file, monkeypatch):
    monkeypatch.setenv("LIGHTEMBED_DEBUG", "1")
    with pytest.raises(ValueError, match="rank"):
        main(fit_args(tiny_bert_dir, sts_file, "--model.init_args.encoder.lora.r", "-1"))


def test_a_bug_keeps_its_traceback(monkeypatch):
    import lightembed.cli

    def broken(argv):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(lightembed.cli.COMMANDS, "evaluate", broken)
    with pytest.raises(ZeroDivisionError):
        main(["evaluate", "x"])


def test_missing_optional_package_is_one_line_naming_the_extra(monkeypatch, capsys):
    import lightembed.cli
    from lightembed.optional import MissingExtra, require

    assert require("json").dumps([]) == "[]"
    with pytest.raises(MissingExtra, match=r"pip install 'lightembed\[mteb\]'"):
        require("lightembed_no_such_package", extra="mteb", purpose="MTEB evaluation")
    monkeypatch.setitem(lightembed.cli.COMMANDS, "evaluate", lambda argv: require("lightembed_no_such_package", "mteb"))
    assert main(["evaluate", "x"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "lightembed evaluate: error: the optional package 'lightembed_no_such_package' is not installed: "
        "pip install 'lightembed[mteb]'"
    ]


def test_the_command_prints_one_line_last_and_exits_non_zero(tmp_path, sts_file):
    """What a terminal shows: the real ``lightembed`` process; the error line is the last thing printed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LIGHTEMBED_DEBUG", None)
    command = [sys.executable, "-m", "lightembed", *fit_args(tmp_path / "nowhere", sts_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "Failed to load" not in done.stderr and "warn" not in done.stderr.lower()
    assert done.stderr.strip().splitlines()[-1].startswith("lightembed fit: error: model path")
    assert done.stdout.strip() == "" or "error" not in done.stdout.lower()


@pytest.mark.parametrize("model", ["no-such-org/all-MiniLM-L6-v3", "./models/no-such-folder"])
def test_pipeline_model_typo_is_one_line_naming_the_model(model, sts_file, tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    stage = {
        "name": "s1",
        "configs": [str(ROOT / "configs" / name) for name in CONFIGS],
        "args": [f"--data.init_args.train={sts_file}", "--data.init_args.val=" + json.dumps({"t": str(sts_file)})],
    }
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(yaml.safe_dump({"name": "typo", "model": model, "seed": 0, "stages": [stage]}))
    status = main(["pipeline", str(spec), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err and "Does not validate" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lightembed pipeline: error: ") and model.removeprefix("./") in last
