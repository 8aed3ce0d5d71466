"""Checks a stage makes when ``fit`` starts: options that only the trainer can confirm or refuse."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn

from lightembed.data.batches import evaluation_sets
from lightembed.precision import cpu_has_fast_bf16
from lightembed.stages.batch_embedding import BatchEmbedding, GradCacheEmbedding, LengthChunkedEmbedding

SHARDED = (FSDPStrategy, ModelParallelStrategy)  # strategies whose every forward pass gathers weights across ranks


def warn_on_emulated_bf16(trainer: L.Trainer) -> None:
    """bf16 on a CPU without native bf16 is emulated and much slower than fp32: say so, and what to use."""
    if isinstance(trainer.accelerator, CPUAccelerator) and "bf16" in str(trainer.precision) and not cpu_has_fast_bf16():
        rank_zero_warn(
            f"precision={trainer.precision!r} on a CPU without native bf16 "
            f"({torch.backends.cpu.get_cpu_capability()}): bf16 is emulated here and runs several times "
            "slower than fp32. Train in fp32: `--trainer.precision 32-true` (Trainer(precision='32-true'))."
        )


def warn_on_accumulation(trainer: L.Trainer) -> None:
    """For a loss whose negatives are the batch's rows, accumulation is not a bigger batch: say what is."""
    if trainer.accumulate_grad_batches > 1:
        rank_zero_warn(
            f"accumulate_grad_batches={trainer.accumulate_grad_batches} averages gradients of separate batches; "
            "it is not a bigger contrastive batch (each loss still sees only its own batch's negatives). For "
            "more in-batch negatives use a bigger batch with `micro_batch_size` (GradCache) and/or "
            "`gather_across_devices`."
        )


def check_batch_embedding(trainer: L.Trainer, embedding: BatchEmbedding) -> None:
    """Refuse what the chosen embedding strategy cannot do under this trainer (sharding, scalers, batch sizes)."""
    if (
        isinstance(embedding, LengthChunkedEmbedding)
        and trainer.world_size > 1
        and isinstance(trainer.strategy, SHARDED)
    ):
        raise ValueError(
            f"length_chunking with {type(trainer.strategy).__name__} on {trainer.world_size} processes: the number "
            "of chunks depends on each rank's text lengths, and every forward pass of a sharded model is a "
            "collective all ranks must make. Use DDP, or leave length_chunking unset."
        )
    if not isinstance(embedding, GradCacheEmbedding):
        return
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        raise ValueError(
            f"micro_batch_size (GradCache) does not support precision={trainer.precision!r} with a gradient "
            "scaler: use bf16-mixed, bf16-true or 32-true"
        )
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None:
        return
    batch_size = evaluation_sets(datamodule).batch_size
    if batch_size % embedding.micro_batch_size:
        raise ValueError(
            f"micro_batch_size={embedding.micro_batch_size} does not divide the data's batch_size={batch_size}: "
            "choose a divisor so every micro-batch has the same size"
        )
