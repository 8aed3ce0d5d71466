"""The lightembed command: fit from the shipped YAML (tiny overrides), evaluate, errors."""

import json
from pathlib import Path

import pytest

from lightembed.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]


def fit_shipped_configs(model_dir, sts_file, name: str, *extra: str) -> None:
    """``lightembed fit`` with the shipped cpu / angle_minilm / stsb configs, on a tiny model and data, 3 steps."""
    cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/trainer/cpu.yaml"),
            "--config",
            str(ROOT / "configs/model/angle_minilm.yaml"),
            "--config",
            str(ROOT / "configs/data/stsb.yaml"),
            "--model.init_args.encoder.backbone",
            str(model_dir),
            "--model.init_args.encoder.max_length",
            "32",
            "--data.init_args.train",
            str(sts_file),
            "--data.init_args.val",
            json.dumps({"tiny": str(sts_file)}),
            "--data.init_args.test",
            json.dumps({"tiny": str(sts_file)}),
            "--data.init_args.batch_size",
            "4",
            "--trainer.max_steps",
            "3",
            "--trainer.val_check_interval",
            "3",
            "--trainer.logger.init_args.name",
            name,
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ]
    )


def test_fit_from_the_shipped_configs_writes_checkpoint_export_and_logs(
    tiny_bert_dir, sts_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    fit_shipped_configs(tiny_bert_dir, sts_file, "clitest")
    run = tmp_path / "checkpoints" / "clitest" / "version_0"
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    assert (run / "export" / "modules.json").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file()
    assert "test/tiny_spearman" in capsys.readouterr().out  # the best checkpoint is tested after fit


def test_evaluate_prints_a_table_and_writes_json(tiny_bert_dir, sts_file, tmp_path, capsys):
    out = tmp_path / "report.json"
    cli_main(["evaluate", str(tiny_bert_dir), "--sts", f"tiny={sts_file}", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| tiny | 12 |" in printed
    report = json.loads(out.read_text())
    assert -100 <= report["sts"]["tiny"]["spearman"] <= 100


def test_evaluate_missing_model_names_the_path(tmp_path, sts_file):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        cli_main(["evaluate", str(tmp_path / "nowhere"), "--sts", str(sts_file)])


def test_evaluate_constant_scores_is_an_error(tiny_bert_dir, tmp_path):
    path = tmp_path / "flat.jsonl"
    path.write_text(
        "".join(json.dumps({"sentence1": f"a {i}", "sentence2": f"b {i}", "score": 3.0}) + "\n" for i in range(4))
    )
    with pytest.raises(ValueError, match="constant"):
        cli_main(["evaluate", str(tiny_bert_dir), "--sts", str(path)])


def test_module_entry_point_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--help"])
    assert exit_info.value.code == 0
    assert "--model" in capsys.readouterr().out


def test_fit_with_wise_ft_exports_the_interpolated_best_checkpoint(tiny_bert_dir, sts_file, tmp_path, monkeypatch):
    """The README's WiSE-FT line: the callback appended on the command line; the export holds θ0 + α·(θ − θ0)."""
    import torch
    from safetensors.torch import load_file

    from lightembed.callbacks.interpolation import CURRENT_KEY

    monkeypatch.chdir(tmp_path)
    fit_shipped_configs(
        tiny_bert_dir,
        sts_file,
        "wise",
        *("--model.init_args.optimizer.init_args.lr", "1e-2", "--trainer.precision", "32-true"),
        "--trainer.callbacks+=lightembed.callbacks.WeightInterpolation",
        "--trainer.callbacks.alpha=0.5",
    )
    run = tmp_path / "checkpoints" / "wise" / "version_0"
    [best] = (run / "checkpoints").glob("best-*.ckpt")
    saved = torch.load(best, weights_only=False)
    start = load_file(tiny_bert_dir / "model.safetensors")
    exported = load_file(run / "export" / "model.safetensors")
    moved = 0.0
    for name, raw in saved[CURRENT_KEY].items():
        key = name.removeprefix("encoder.backbone.")  # the stage holds its Encoder, which holds the backbone
        torch.testing.assert_close(exported[key], start[key] + 0.5 * (raw - start[key]))
        moved = max(moved, (raw - start[key]).abs().max().item())
    assert moved > 1e-3
