"""Every YAML under configs/ parses and instantiates through the CLI (run=False), on top of a complete base set."""

from pathlib import Path

import pytest

from lightembed.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
# pipeline files are not LightningCLI configs: tests/test_pipeline.py parses them
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "pipelines" not in p.parts)
BASE = [ROOT / "configs/trainer/cpu.yaml", ROOT / "configs/model/angle_minilm.yaml", ROOT / "configs/data/stsb.yaml"]


def test_there_are_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_parses(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [arg for path in dict.fromkeys([*BASE, config]) for arg in ("--config", str(path))]
    cli = build_cli(args, run=False)
    assert cli.model is not None and cli.datamodule is not None
    # linked values are written once (in the model) and reach the data module
    assert cli.datamodule.hparams.tokenizer == cli.model.settings.backbone
    assert cli.datamodule.hparams.max_length == cli.model.settings.max_length
