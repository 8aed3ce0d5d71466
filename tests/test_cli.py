"""The lightembed command: fit from the shipped YAML (tiny overrides), evaluate, errors."""

import json
from pathlib import Path

# Lightning's log handler keeps the sys.stderr of its import: import it now, not under a test's captured stderr
# (lightembed.cli itself no longer imports Lightning)
import lightning.pytorch  # noqa: F401
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


# ------------------------------------------------------------------------------------------- one entry, quiet, fast
SUBCOMMANDS = ["fit", "validate", "test", "predict", "pipeline", "evaluate", "analyze", "mine-negatives"]
SHIPPED = (
    "--config",
    str(ROOT / "configs/trainer/cpu.yaml"),
    "--config",
    str(ROOT / "configs/model/angle_minilm.yaml"),
)


def test_help_lists_every_subcommand_with_a_line(capsys):
    cli_main(["--help"])
    printed = capsys.readouterr().out
    listed = {line.split()[0] for line in printed.splitlines() if line.startswith("  ") and len(line.split()) > 1}
    assert set(SUBCOMMANDS) <= listed
    assert "Lightning Trainer command line tool" not in printed


def test_help_in_a_fresh_process_prints_no_warning_and_imports_no_torch():
    """``python -m lightembed --help`` prints only the help: no bitsandbytes/Lightning warning, no torch import."""
    import subprocess
    import sys

    code = (
        "import sys; from lightembed.cli import main; main(['--help']); print('torch' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stderr.strip() == "False"  # nothing but our marker on stderr, and torch was never imported
    assert not [line for line in done.stdout.splitlines() if "warn" in line.lower() or "Failed to load" in line]
    module = subprocess.run([sys.executable, "-m", "lightembed", "--help"], capture_output=True, text=True, timeout=60)
    assert module.returncode == 0 and module.stderr == ""
    assert all(name in module.stdout for name in SUBCOMMANDS)


def test_unknown_command_is_one_line_with_a_suggestion(capsys):
    from lightembed.cli import main

    assert main(["fitt"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "lightembed: error: unknown command 'fitt' (did you mean 'fit'?); `lightembed --help` lists the commands"
    ]


def test_flag_spelling_either_way():
    from lightembed.cli import normalise_flags

    assert normalise_flags("fit", ["--trainer.max-steps=3", "--print-config", "-c", "a-b.yaml"]) == [
        "--trainer.max_steps=3",
        "--print_config",
        "-c",
        "a-b.yaml",
    ]
    assert normalise_flags("evaluate", ["my_model", "--data_root", "x_y", "--max_length=8"]) == [
        "my_model",
        "--data-root",
        "x_y",
        "--max-length=8",
    ]


def test_model_help_lists_the_losses_not_every_module(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--model.help", "ContrastiveModule"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "lightembed.losses.AnglEObjectiveLoss" in printed and "EmbeddingLoss" in printed
    assert "torch.nn.Linear" not in printed
    assert len(printed.splitlines()) < 250  # it was ~790 lines with the loss typed as any nn.Module


def test_top_level_optimizer_is_refused_with_the_stage_option_named(capsys):
    from lightembed.cli import main

    status = main(["fit", "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert "--optimizer" in err[0] and "--model.init_args.optimizer torch.optim.SGD" in err[0]


def test_stage_optimizer_option_trains_with_sgd(tiny_bert_dir, sts_file, tmp_path, monkeypatch):
    """The documented way to pick the optimizer: ``--model.init_args.optimizer``; the run really uses SGD."""
    import torch

    from lightembed.cli import run_command

    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        *(
            "--config",
            str(ROOT / "configs/trainer/cpu.yaml"),
            "--config",
            str(ROOT / "configs/model/angle_minilm.yaml"),
        ),
        *("--model.init_args.encoder.backbone", str(tiny_bert_dir), "--model.init_args.encoder.max_length", "32"),
        *("--model.init_args.optimizer", "torch.optim.SGD", "--model.init_args.optimizer.lr", "0.1"),
        *("--data", "lightembed.data.PairDataModule", "--data.init_args.train", str(sts_file)),
        *("--data.init_args.train_format", "scored_pairs", "--data.init_args.batch_size", "4"),
        *("--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.logger", "false"),
        *("--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false"),
        *("--trainer.enable_progress_bar", "false", "--trainer.precision", "32-true"),
    ]
    cli = run_command(args)
    [optimizer] = cli.trainer.optimizers
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.1
    assert cli.trainer.global_step == 2


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_precision_auto_follows_the_cpu(native_bf16, expected, tiny_bert_dir, tmp_path, monkeypatch):
    """configs/trainer/cpu.yaml says ``precision: auto``: bf16-mixed only on CPUs with native bf16."""
    import lightembed.precision
    from lightembed.cli import build_cli

    monkeypatch.setattr(lightembed.precision, "cpu_has_fast_bf16", lambda: native_bf16)
    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        [
            *(
                "--config",
                str(ROOT / "configs/trainer/cpu.yaml"),
                "--config",
                str(ROOT / "configs/model/angle_minilm.yaml"),
            ),
            *("--config", str(ROOT / "configs/data/stsb.yaml"), "--data.init_args.data_root", str(tmp_path)),
            *("--model.init_args.encoder.backbone", str(tiny_bert_dir)),
        ],
        run=False,
    )
    assert cli.config.trainer.precision == expected
    assert cli.trainer.precision == expected
    override = build_cli(
        [
            "--config",
            str(ROOT / "configs/trainer/cpu.yaml"),
            "--trainer.precision",
            "bf16-mixed",
            "--model",
            "ContrastiveModule",
            "--model.init_args.encoder.backbone",
            str(tiny_bert_dir),
            "--data",
            "lightembed.data.PairDataModule",
        ],
        run=False,
    )
    assert override.trainer.precision == "bf16-mixed"  # an explicit value is kept as given


def test_resolve_precision_on_gpu_and_explicit_values(monkeypatch):
    import torch

    from lightembed.precision import resolve_precision

    assert resolve_precision("16-mixed", "cpu") == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "gpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "auto") == "bf16-mixed"
