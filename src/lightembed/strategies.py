"""Sharded training on Lightning's own strategies, with the layer classes found from the model, not from its name.

* :class:`LayerFSDPStrategy` — Lightning's ``FSDPStrategy`` (FSDP1, GPUs): every transformer block is its own FSDP
  unit, ``use_orig_params=True`` (optimizers and LoRA see the original parameters), optional activation
  checkpointing of the same blocks, sharded or full state-dict checkpoints. Built anywhere (configs parse on a
  laptop); on a non-CUDA device it stops at launch with a message that names ``fsdp2``.
* :class:`FSDP2Strategy` — Lightning's ``ModelParallelStrategy`` as pure data parallelism (every process is a
  data-parallel rank, tensor-parallel size 1); the stage applies ``fully_shard`` per block in ``configure_model``
  (:func:`shard_blocks`). Runs on GPUs (NCCL) and on CPUs (gloo).

The blocks are the classes a Hugging Face model lists in ``_no_split_modules`` (``BertLayer``,
``LlamaDecoderLayer``, ...), found on the model itself, LoRA-wrapped or not.

Both are registered with Lightning under short names, so ``--trainer.strategy fsdp2`` (CPU or GPU) and
``--trainer.strategy fsdp_blocks`` (GPU) work without a strategy YAML.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, StrategyRegistry
from torch import nn


def block_class_names(model: nn.Module) -> set[str]:
    """Class names of the blocks to shard: the ``_no_split_modules`` of every Hugging Face model inside ``model``."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


class BlockPolicy:
    """FSDP auto-wrap / activation-checkpointing policy: wrap the modules whose class is a block of its model.

    FSDP visits a parent (``recurse=True``) before its children, so the ``_no_split_modules`` of each Hugging Face
    model are known by the time its blocks are asked about.
    """

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        self.names.update(getattr(module, "_no_split_modules", None) or [])
        return True if recurse else type(module).__name__ in self.names


class LayerFSDPStrategy(FSDPStrategy):
    """Lightning ``FSDPStrategy`` wrapping each transformer block (``_no_split_modules``) as one FSDP unit.

    Args:
        activation_checkpointing: recompute each block's activations in the backward pass (FSDP's checkpoint
            wrapper; the stage option ``gradient_checkpointing`` is the Hugging Face equivalent, use one of them).
        state_dict_type: ``sharded`` (each rank writes its shard; fast, for resuming) or ``full`` (one consolidated
            file on rank 0; what ``ModelCheckpoint`` files for export need).
        sharding_strategy: ``FULL_SHARD`` (ZeRO-3), ``SHARD_GRAD_OP`` (ZeRO-2), ``NO_SHARD`` (DDP-like),
            ``HYBRID_SHARD`` (full shard within a node, replicate across nodes).
        cpu_offload: keep parameters and gradients on the CPU between uses.
        use_orig_params: let the optimizer see the original (unflattened) parameters; needed with frozen
            parameters (LoRA) and for per-parameter weight decay.
        process_group_backend: ``nccl`` by default on GPUs.
        timeout: collective timeout.
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        state_dict_type: Literal["full", "sharded"] = "sharded",
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
        cpu_offload: bool = False,
        use_orig_params: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta = timedelta(seconds=1800),
    ) -> None:
        super().__init__(
            auto_wrap_policy=BlockPolicy(),
            activation_checkpointing_policy=BlockPolicy() if activation_checkpointing else None,
            state_dict_type=state_dict_type,
            sharding_strategy=sharding_strategy,
            cpu_offload=cpu_offload,
            process_group_backend=process_group_backend,
            timeout=timeout,
            use_orig_params=use_orig_params,
        )

    def setup_environment(self) -> None:
        if self.root_device.type != "cuda":
            raise ValueError(
                f"LayerFSDPStrategy (Lightning FSDPStrategy, configs/trainer/fsdp.yaml) needs CUDA GPUs, but this run "
                f"is on {self.root_device.type!r}: use configs/trainer/fsdp2.yaml (`fsdp2`: ModelParallelStrategy "
                "with fully_shard, which also runs on CPUs with gloo), or configs/trainer/ddp.yaml"
            )
        super().setup_environment()


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning ``ModelParallelStrategy`` as FSDP2 data parallelism: a 1-D mesh of all processes, no tensor parallel.

    Each process reads its own part of the data (Lightning's distributed sampler over the data-parallel ranks); the
    stage shards every block with ``fully_shard`` in ``configure_model`` (:func:`shard_blocks`).

    Args:
        save_distributed_checkpoint: each rank writes its shard (torch distributed checkpoint folder); False gathers
            one full checkpoint file on rank 0.
        process_group_backend: ``nccl`` on GPUs, ``gloo`` on CPUs by default.
        timeout: collective timeout.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta = timedelta(seconds=1800),
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.world_size  # every process is a data-parallel rank
        super().setup_environment()


def shard_blocks(model: nn.Module, mesh) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to every block of ``model`` (``_no_split_modules``), then to ``model`` itself.

    ``mesh`` is the strategy's device mesh; all of its ranks shard the parameters (data parallelism only).
    """
    from torch.distributed.fsdp import fully_shard

    if mesh.ndim > 1:
        if any(size != 1 for size in mesh.mesh.shape[1:]):
            raise ValueError(
                f"lightembed stages are data-parallel only: got a device mesh of shape {tuple(mesh.mesh.shape)}; "
                "use FSDP2Strategy (tensor_parallel_size=1)"
            )
        mesh = mesh[mesh.mesh_dim_names[0]]
    names = block_class_names(model)
    if not names:
        raise ValueError(f"{type(model).__name__} lists no `_no_split_modules`: cannot tell which blocks to shard")
    for module in list(model.modules()):
        if type(module).__name__ in names:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


STRATEGY_NAMES = {
    "fsdp2": (FSDP2Strategy, "lightembed FSDP2: ModelParallelStrategy as data parallelism, fully_shard per block"),
    "fsdp_blocks": (LayerFSDPStrategy, "lightembed FSDP1 on CUDA: FSDPStrategy wrapping every transformer block"),
}
for _name, (_strategy, _description) in STRATEGY_NAMES.items():
    if _name not in StrategyRegistry:
        StrategyRegistry.register(_name, _strategy, description=_description)
