"""What TensorBoard shows after a fit from the shipped configs: throughput, gradient norm, named learning-rate groups,
the loss and optimizer settings as hyperparameters, and hp_metric = the best validation score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lightembed.callbacks.monitoring import BestScore, batch_size_and_tokens
from lightembed.fit import build_cli
from lightembed.stages.optim import decay_groups, unique_group_names

ROOT = Path(__file__).resolve().parents[2]


def test_rows_and_tokens_of_a_pair_batch_count_every_field_without_padding():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # (B=2, L=4): 5 real tokens
    batch = {"anchor": {"attention_mask": mask}, "positive": {"attention_mask": mask[:, :3]}, "score": torch.ones(2)}
    assert batch_size_and_tokens(batch) == (2, 10)
    assert batch_size_and_tokens({"input_ids": mask, "attention_mask": mask}) == (2, 5)  # a flat MNTP batch


def test_parameter_groups_are_named_and_names_made_unique():
    layer = torch.nn.Linear(2, 2)
    groups = unique_group_names([*decay_groups(layer.named_parameters()), *decay_groups(layer.named_parameters())])
    assert [g["name"] for g in groups] == ["decay", "no_decay", "decay-2", "no_decay-2"]
    assert [g["name"] for g in decay_groups(layer.named_parameters(), prefix="proxy/")] == [
        "proxy/decay",
        "proxy/no_decay",
    ]


def test_best_score_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        BestScore(mode="best")


def test_tensorboard_shows_throughput_grad_norm_lr_groups_hparams_and_best_score(tiny_bert_dir, sts_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    configs = ["configs/trainer/cpu.yaml", "configs/model/angle_minilm.yaml", "configs/data/stsb.yaml"]
    tiny = json.dumps({"tiny": str(sts_file)})
    options = {
        "model.init_args.encoder.backbone": str(tiny_bert_dir),
        "model.init_args.encoder.max_length": "32",
        "data.init_args.train": str(sts_file),
        "data.init_args.val": tiny,
        "data.init_args.test": "{}",
        "data.init_args.batch_size": "2",
        "trainer.max_epochs": "1",
        "trainer.val_check_interval": "2",  # 6 steps: validation after steps 2, 4 and 6
        "trainer.log_every_n_steps": "1",
        "trainer.precision": "32-true",
        "trainer.logger.init_args.save_dir": str(tmp_path),
        "trainer.logger.init_args.name": "tb",
        "trainer.enable_progress_bar": "false",
        "model.init_args.optimizer.init_args.lr": "1e-3",  # a rate that moves the tiny model between validations
    }
    args = [arg for config in configs for arg in ("--config", str(ROOT / config))]
    build_cli(["fit", *args, *(arg for key, value in options.items() for arg in (f"--{key}", value))])
    run = tmp_path / "tb" / "version_0"
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    wanted = {"throughput/pairs_per_sec", "throughput/tokens_per_sec", "train/grad_norm"}
    wanted |= {"lr-AdamW/decay", "lr-AdamW/no_decay", "hp_metric", "val/spearman_mean"}
    assert wanted <= tags, sorted(tags)
    assert all(e.value > 0 for e in events.Scalars("throughput/tokens_per_sec"))
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm"))
    val = [e.value for e in events.Scalars("val/spearman_mean")]
    assert len(val) == 3
    hp_metric = events.Scalars("hp_metric")
    assert hp_metric[-1].value == pytest.approx(max(val), abs=1e-4)
    assert [e.value for e in hp_metric[1:]] == pytest.approx([max(val[: i + 1]) for i in range(3)], abs=1e-4)
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["loss"] == "AnglEObjectiveLoss" and hparams["loss.in_batch.min_score"] == 4.0
    assert hparams["optimizer"] == "AdamW" and hparams["optimizer.lr"] == pytest.approx(1e-3)


def test_throughput_is_logged_after_a_fit_resumed_mid_epoch(tiny_bert_dir, sts_file, tmp_path):
    """Lightning skips on_train_epoch_start for the epoch a fit resumes in (a checkpoint saved at SIGTERM is mid-epoch):
    the first resumed batch once failed in Throughput with an IndexError; it now starts its window at on_train_start."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    configs = ["configs/trainer/cpu.yaml", "configs/model/cosent_minilm.yaml", "configs/data/stsb.yaml"]
    mid = '{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "%s", '
    mid += '"filename": "mid", "every_n_train_steps": 2, "save_top_k": -1}}'
    options = {
        "model.init_args.encoder.backbone": str(tiny_bert_dir),
        "model.init_args.encoder.max_length": "32",
        "data.init_args.train": str(sts_file),
        "data.init_args.val": json.dumps({"tiny": str(sts_file)}),
        "data.init_args.test": "{}",
        "data.init_args.batch_size": "2",  # 6 steps per epoch; the checkpoint after step 2 is mid-epoch
        "trainer.max_epochs": "1",
        "trainer.log_every_n_steps": "1",
        "trainer.num_sanity_val_steps": "0",
        "trainer.precision": "32-true",
        "trainer.logger.init_args.save_dir": str(tmp_path),
        "trainer.logger.init_args.name": "tb",
        "trainer.enable_progress_bar": "false",
    }
    args = [arg for config in configs for arg in ("--config", str(ROOT / config))]
    flat = [arg for key, value in options.items() for arg in (f"--{key}", value)]
    build_cli(["fit", *args, *flat, "--trainer.max_steps=2", "--trainer.callbacks+=" + mid % (tmp_path / "ckpt")])
    [checkpoint] = (tmp_path / "ckpt").glob("mid*.ckpt")
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"] == 2

    resumed = [*flat, "--trainer.logger.init_args.name=resumed"]
    cli = build_cli(["fit", *args, *resumed, "--ckpt_path", str(checkpoint)])
    assert cli.trainer.global_step == 6
    events = EventAccumulator(str(tmp_path / "resumed" / "version_0"))
    events.Reload()
    rates = events.Scalars("throughput/tokens_per_sec")
    assert [e.step for e in rates][-1] >= 5 and all(e.value > 0 for e in rates)
