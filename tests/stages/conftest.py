"""Shared by the stage tests: a shipped model config trained two steps through ``lightembed fit`` on a tiny model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from lightembed.cli import run_command

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fit_config_two_steps(tiny_bert_dir, tmp_path, monkeypatch) -> Callable[..., Any]:
    """``fit_config_two_steps(model, data, train, batch_size=4, extra=())``: ``configs/model/{model}_minilm.yaml`` with
    ``configs/data/{data}.yaml`` on the tiny BERT and the file ``train``, two steps, no validation, logger or
    checkpoints; checks that both steps ran, the loss is finite and some parameter was stepped; returns the CLI."""

    def fit(model: str, data: str, train: Path, batch_size: int = 4, extra: Sequence[str] = ()) -> Any:
        monkeypatch.chdir(tmp_path)
        args = [
            "fit",
            *("--config", str(ROOT / "configs/trainer/cpu.yaml")),
            *("--config", str(ROOT / f"configs/model/{model}_minilm.yaml")),
            *("--config", str(ROOT / f"configs/data/{data}.yaml")),
            *("--model.init_args.encoder.backbone", str(tiny_bert_dir), "--model.init_args.encoder.max_length", "32"),
            *("--data.init_args.train", str(train), "--data.init_args.batch_size", str(batch_size)),
            *("--data.init_args.val", "{}", "--data.init_args.test", "{}"),
            *("--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.logger", "false"),
            *("--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false"),
            *("--trainer.enable_progress_bar", "false", "--trainer.precision", "32-true"),
            *extra,
        ]
        cli = run_command(args)
        assert cli.trainer.global_step == 2
        assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
        [optimizer] = cli.trainer.optimizers
        stepped = [p for group in optimizer.param_groups for p in group["params"] if p in optimizer.state]
        assert stepped, "no parameter received a gradient step"
        return cli

    return fit
