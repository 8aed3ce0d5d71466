"""Shared by the pipeline tests: a pipeline file of CoSENT stages built from the shipped configs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [
    ROOT / "configs/trainer/cpu.yaml",
    ROOT / "configs/model/cosent_minilm.yaml",
    ROOT / "configs/data/stsb.yaml",
]


def stage_args(sts_file: Path, epochs: int) -> list[str]:
    return [
        "--model.init_args.encoder.max_length=32",
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


def _write_pipeline(path: Path, model: Path | str, sts_file: Path, epochs=(2, 2), **extra) -> Path:
    """A pipeline file of CoSENT stages s1, s2, ... from the shipped configs, trained on the 12-row STS fixture."""
    stages = [
        {"name": f"s{i + 1}", "configs": [str(c) for c in CONFIGS], "args": stage_args(sts_file, n)}
        for i, n in enumerate(epochs)
    ]
    spec = {"name": "tiny", "model": str(model), "seed": 0, "stages": stages, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def write_pipeline() -> Callable[..., Path]:
    """``write_pipeline(path, model, sts_file, epochs=(2, 2), **extra)``: a pipeline file of stages s1, s2, ..."""
    return _write_pipeline
