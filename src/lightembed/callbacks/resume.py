"""Exact resume at epoch boundaries: an epoch-end ``last.ckpt`` and RNGs reseeded from ``(seed, epoch, rank)``.

The pipeline adds :class:`ResumeCheckpoint` to every stage; a rerun continues an interrupted stage from its
``last.ckpt`` with ``--ckpt_path``.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightembed.callbacks.export import ExportCallback
from lightembed.provenance import bytes_sha256


def export_callback(trainer: L.Trainer) -> ExportCallback:
    """The trainer's :class:`ExportCallback`; a stage without one raises ``ValueError`` naming its run folder."""
    for callback in trainer.callbacks:
        if isinstance(callback, ExportCallback):
            return callback
    raise ValueError(
        "a pipeline stage needs lightembed.callbacks.ExportCallback in its trainer callbacks (the export folder is "
        f"the next stage's input); add it to the stage's trainer config (run folder {trainer.log_dir})"
    )


def epoch_seed(base_seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch on one rank: a hash of ``(base_seed, epoch, rank)`` in ``[0, 2**32)``."""
    digest = bytes.fromhex(bytes_sha256(f"{base_seed}:{epoch}:{rank}".encode()))
    return int.from_bytes(digest[:4], "little")


class ResumeCheckpoint(Checkpoint):
    """Exact resume at epoch boundaries: ``<dirpath>/last.ckpt`` at every epoch end, RNGs reseeded at every epoch.

    * At the end of every training epoch it writes ``last.ckpt``: to ``last.ckpt.partial``, flushed to disk, then
      the old ``last.ckpt`` becomes ``previous.ckpt`` and the new file takes its name (``os.replace``), so a crash
      never leaves half a checkpoint under a real name and a checkpoint found corrupt anyway has a predecessor. As
      a :class:`~lightning.pytorch.callbacks.Checkpoint` it runs after the other callbacks' epoch-end hooks, so the
      file holds their updated states (a best-model ``ModelCheckpoint``'s).
    * When Lightning stops training on SIGTERM (or on SIGINT, which :mod:`lightembed.interrupts` routes the same
      way) it writes ``last.ckpt`` the same way at that batch boundary (``on_exception``): the rerun resumes there,
      though not bitwise like an epoch-end resume (Lightning restarts the epoch's DataLoader).
    * At the first batch of every epoch it seeds torch (CPU and CUDA), numpy and ``random`` from
      ``(base seed, epoch, global rank)``. An epoch's dropout masks then do not depend on what ran before it, so a
      run resumed from an epoch-end checkpoint draws the same numbers as an uninterrupted one (a fresh run and a
      resumed one create the DataLoader iterator, which draws from the global RNG, at different moments; the data
      order itself is fixed by the samplers' seed and epoch). The base seed is ``$PL_GLOBAL_SEED`` (set by
      ``seed_everything``), else a random one; it is kept in the checkpoint.

    Args:
        dirpath: folder of ``last.ckpt``.
    """

    FILENAME = "last.ckpt"
    PREVIOUS = "previous.ckpt"

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.base_seed: int | None = None

    @property
    def path(self) -> Path:
        return Path(self.dirpath) / self.FILENAME

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # fail before training, not after: a pipeline stage hands its export on
            export_callback(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.base_seed is None:  # not restored from a checkpoint
            env = os.environ.get("PL_GLOBAL_SEED")
            self.base_seed = int(env) if env is not None else random.SystemRandom().randrange(2**32)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            assert self.base_seed is not None
            seed = epoch_seed(self.base_seed, trainer.current_epoch, trainer.global_rank)
            torch.manual_seed(seed)  # CPU and every CUDA device
            np.random.seed(seed)
            random.seed(seed)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run:
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # only Lightning's clean stop (raised at a batch boundary) leaves a state worth resuming from; a bug's
        # exception may come mid optimizer step, and the test pass after fit has nothing to resume
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if isinstance(exception, SIGTERMException) and fitting and not trainer.fast_dev_run:
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        # write next to the target, then rename: a kill leaves the previous checkpoint or the new one, never half of
        # one (Lightning's own temporary file may sit on another file system, where its final move is a copy)
        partial = self.path.with_name(self.FILENAME + ".partial")
        trainer.save_checkpoint(partial)  # every rank calls it; it ends with a barrier
        if trainer.is_global_zero:
            _fsync(partial)
            previous = self.path.with_name(self.PREVIOUS)
            if self.path.exists():
                if previous.is_dir():  # sharded strategies write folders, which os.replace cannot overwrite
                    shutil.rmtree(previous)
                os.replace(self.path, previous)
            os.replace(partial, self.path)
            _fsync(self.path.parent)
        trainer.strategy.barrier("ResumeCheckpoint")

    def state_dict(self) -> dict[str, Any]:
        return {"base_seed": self.base_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_seed = state_dict.get("base_seed")


def _fsync(path: Path) -> None:
    """Flush a file, or every file of a folder and the folder itself, to disk (a rename is durable only after)."""
    paths = [p for p in sorted(path.rglob("*")) if p.is_file()] + [path] if path.is_dir() else [path]
    for item in paths:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from (truncated, corrupt), or None when it loads.

    Loading memory-maps the tensors (``mmap=True``), so checking a large checkpoint reads its index, not its data.
    """
    try:
        if path.is_dir():  # a sharded checkpoint: Lightning checks it when loading
            return None if any(path.iterdir()) else "empty folder"
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # torch raises RuntimeError, OSError, EOFError or pickle errors for a damaged file
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None
