"""WeightInterpolation (WiSE-FT): the run ends, validates and checkpoints θ0 + α·(θ − θ0), and resumes training θ."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightembed.callbacks import WeightInterpolation
from lightembed.callbacks.interpolation import CURRENT_KEY
from lightembed.encoder import EncoderSettings
from lightembed.lora import LoRASettings
from lightembed.stages.base import EmbeddingModule

TEXTS = [
    ["A man is playing a guitar.", "Someone plays music on stage tonight.", "Short."],
    ["A dog runs in the park.", "Two children read books.", "The cat sleeps."],
]
LORA = LoRASettings(r=4, alpha=8, dropout=0.0)


class PullStage(EmbeddingModule):
    """Pulls embeddings towards 1; every validation records the trainable weights it sees."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[dict[str, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        return (self.embed(batch) - 1.0).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.seen.append(trainable(self))


def trainable(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def make_stage(folder, lora=None) -> PullStage:
    return PullStage(
        EncoderSettings(backbone=str(folder), max_length=32, dropout=0.0, lora=lora),
        warmup_ratio=0.0,
        scheduler="constant",  # a resumed run with more epochs keeps the same learning rates
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
    )


def fit(folder, root, callbacks=(), epochs=2, lora=None, ckpt_path=None, stage=None):
    L.seed_everything(0, verbose=False)
    stage = stage or make_stage(folder, lora)
    batches = [dict(stage.tokenizer(t, padding=True, return_tensors="pt")) for t in TEXTS]
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=list(callbacks),
    )
    loader = DataLoader(batches, batch_size=None)
    trainer.fit(
        stage,
        train_dataloaders=loader,
        val_dataloaders=DataLoader(batches[:1], batch_size=None),
        **({"ckpt_path": ckpt_path} if ckpt_path else {}),
    )
    return stage


def naive_interpolation(start, end, alpha):
    return {name: start[name] + alpha * (end[name] - start[name]) for name in end}


@pytest.fixture(scope="module")
def reference(tiny_bert_dir, tmp_path_factory):
    """The plain run: its starting weights and the raw weights after every epoch."""
    stage = make_stage(tiny_bert_dir)
    stage.configure_model()
    start = trainable(stage)
    trained = fit(tiny_bert_dir, tmp_path_factory.mktemp("reference"), stage=stage)
    return start, trained.seen, trainable(trained)


def test_the_run_ends_validates_and_checkpoints_interpolated_weights(tiny_bert_dir, tmp_path, reference):
    start, raw_seen, raw_end = reference
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    stage = fit(tiny_bert_dir, tmp_path, callbacks=[WeightInterpolation(alpha=0.3), every_epoch])

    expected = naive_interpolation(start, raw_end, 0.3)
    assert any((raw_end[n] - start[n]).abs().max() > 1e-3 for n in start)  # training moved the weights
    torch.testing.assert_close(trainable(stage), expected)
    # Each epoch's validation saw that epoch's interpolation, and training went on from the raw weights.
    assert len(stage.seen) == len(raw_seen) == 2
    for seen, raw in zip(stage.seen, raw_seen, strict=True):
        torch.testing.assert_close(seen, naive_interpolation(start, raw, 0.3))
    # Checkpoints written during training hold the interpolation in state_dict and the raw weights beside it.
    for epoch, raw in enumerate(raw_seen):
        saved = torch.load(tmp_path / "ckpt" / f"epoch={epoch}.ckpt", weights_only=False)
        torch.testing.assert_close({n: saved["state_dict"][n] for n in start}, naive_interpolation(start, raw, 0.3))
        torch.testing.assert_close(saved[CURRENT_KEY], raw)
    torch.testing.assert_close(raw_seen[-1], raw_end)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_one_is_plain_fine_tuning_and_zero_the_start(alpha, tiny_bert_dir, tmp_path, reference):
    start, _, raw_end = reference
    stage = fit(tiny_bert_dir, tmp_path, callbacks=[WeightInterpolation(alpha=alpha)])
    torch.testing.assert_close(trainable(stage), raw_end if alpha == 1.0 else start)


def test_resuming_continues_the_raw_weights_from_the_original_start(tiny_bert_dir, tmp_path, reference):
    start, _, raw_end = reference
    first = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)  # last.ckpt after training ends
    fit(tiny_bert_dir, tmp_path, callbacks=[WeightInterpolation(alpha=0.3), first], epochs=1)
    resumed = fit(
        tiny_bert_dir, tmp_path, callbacks=[WeightInterpolation(alpha=0.3)], ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    torch.testing.assert_close(trainable(resumed), naive_interpolation(start, raw_end, 0.3))

    with pytest.raises(ValueError, match="alpha=0.3"):
        fit(
            tiny_bert_dir,
            tmp_path,
            callbacks=[WeightInterpolation(alpha=0.5)],
            ckpt_path=tmp_path / "ckpt" / "last.ckpt",
        )


def test_a_lora_adapter_ends_with_alpha_times_its_delta(tiny_bert_dir, tmp_path):
    raw = fit(tiny_bert_dir, tmp_path / "raw", lora=LORA)
    wise = fit(tiny_bert_dir, tmp_path / "wise", lora=LORA, callbacks=[WeightInterpolation(alpha=0.4)])
    raw_w, wise_w = trainable(raw), trainable(wise)
    b_names = [n for n in raw_w if ".lora_B." in n]
    assert b_names and all(raw_w[n].abs().max() > 1e-3 for n in b_names)
    for name, value in raw_w.items():
        if ".lora_A." in name:
            b = name.replace(".lora_A.", ".lora_B.")
            # The merged delta B·A of the interpolated adapter is exactly alpha times the trained one.
            torch.testing.assert_close(wise_w[b] @ wise_w[name], 0.4 * (value.new_tensor(raw_w[b]) @ value))
            torch.testing.assert_close(wise_w[name], value)


def test_an_adapter_that_did_not_start_at_zero_is_refused(tiny_bert_dir, tmp_path):
    stage = make_stage(tiny_bert_dir, LORA)
    stage.configure_model()
    with torch.no_grad():
        for name, p in stage.named_parameters():
            if ".lora_B." in name:
                p.fill_(0.01)
    with pytest.raises(ValueError, match="did not start at zero"):
        fit(tiny_bert_dir, tmp_path, callbacks=[WeightInterpolation()], stage=stage)


def test_bad_settings_are_refused(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        WeightInterpolation(alpha=1.5)
    weights_only = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_weights_only=True)
    with pytest.raises(ValueError, match="save_weights_only"):
        fit(tiny_bert_dir, tmp_path, callbacks=[WeightInterpolation(), weights_only])


def test_a_second_fit_interpolates_from_its_own_start(tiny_bert_dir, tmp_path, reference):
    start, _, raw_end = reference
    callback = WeightInterpolation(alpha=1.0)
    first = fit(tiny_bert_dir, tmp_path, callbacks=[callback])
    torch.testing.assert_close(trainable(first), raw_end)
    callback.alpha = 0.0  # the same callback, a new fit that goes on from the first: alpha 0 gives the second's start
    second = fit(tiny_bert_dir, tmp_path, callbacks=[callback], stage=first)
    torch.testing.assert_close(trainable(second), raw_end)
    assert any((raw_end[n] - start[n]).abs().max() > 1e-3 for n in start)
