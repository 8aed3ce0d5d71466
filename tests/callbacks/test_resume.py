"""ResumeCheckpoint: per-epoch seeds, its state in the checkpoint, and a clear error without ExportCallback."""

from __future__ import annotations

import lightning as L
import pytest

from lightembed.callbacks import ExportCallback, ResumeCheckpoint
from lightembed.callbacks.resume import epoch_seed, export_callback


def test_epoch_seed_depends_on_seed_epoch_and_rank_only():
    seeds = {epoch_seed(s, e, r) for s in (0, 1) for e in (0, 1, 2) for r in (0, 1)}
    assert len(seeds) == 12 and all(0 <= s < 2**32 for s in seeds)
    assert epoch_seed(7, 3, 1) == epoch_seed(7, 3, 1)


def test_base_seed_travels_in_the_checkpoint(tmp_path):
    callback = ResumeCheckpoint(str(tmp_path))
    assert callback.path == tmp_path / "last.ckpt"
    callback.base_seed = 123
    restored = ResumeCheckpoint(str(tmp_path))
    restored.load_state_dict(callback.state_dict())
    assert restored.base_seed == 123


def test_a_stage_without_export_callback_is_refused_before_training(tmp_path):
    trainer = L.Trainer(logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="needs lightembed.callbacks.ExportCallback"):
        ResumeCheckpoint(str(tmp_path)).setup(trainer, L.LightningModule(), "fit")
    export = ExportCallback()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[export])
    assert export_callback(trainer) is export
