"""Lightning strategies: DDP and FSDP2 on 2 CPU processes (gloo) train to the weights of 1 process on the global batch.

One spawn runs every 2-process fit (DDP with gathered negatives, DDP + GradCache, FSDP2 + GradCache); the parent
trains the single-process reference once. Each step, rank ``r`` gets rows ``[8s + 4r, 8s + 4r + 4)`` and the
reference the 8 rows ``[8s, 8s + 8)`` (rank order), so with ``gather_across_devices`` both see the same global batch.
Dropout is off (the processes cannot share one random stream). Tolerance on the final weights after 2 AdamW steps
(lr 1e-3): 2e-5 absolute, float32 sums in a different order.
"""

from __future__ import annotations

import json
import os
import socket

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from lightembed.data.collators import PairCollator
from lightembed.encoder import EncoderSettings
from lightembed.losses import AnglEObjectiveLoss
from lightembed.stages import ContrastiveModule
from lightembed.strategies import FSDP2Strategy, LayerFSDPStrategy

WORLD = 2
PER_RANK = 4
STEPS = 2
ROWS = [  # 16 distinct pairs with scores
    (f"Sentence {i} is about topic {i % 5} on day {i}.", f"A text on subject {i % 5}, day number {i}.", (i * 7) % 6)
    for i in range(STEPS * WORLD * PER_RANK)
]
RUNS = {  # name -> (strategy, micro_batch_size); gathering without GradCache: tests/test_distributed.py
    "ddp-gather-gradcache": ("ddp", 2),
    "fsdp2-gather-gradcache": ("fsdp2", 2),
}
ATOL = 2e-5


class ShardData(L.LightningDataModule):
    """Rank ``r`` of ``world`` reads rows ``[s·world·b + r·b, ... + b)`` at step ``s`` (b = rows per rank).

    No validation or test sets: it declares empty ones, as every data module a stage trains on declares its sets
    (``lightembed.data.batches.EvaluationSets``).
    """

    val_names: list[str] = []
    sts_val_names: list[str] = []
    test_names: list[str] = []

    def __init__(self, tokenizer_dir: str, rows_per_rank: int) -> None:
        super().__init__()
        self.tokenizer_dir = tokenizer_dir
        self.rows_per_rank = rows_per_rank
        self.batch_size = rows_per_rank

    def train_dataloader(self) -> DataLoader:
        from lightembed.backbones import load_tokenizer

        world, rank = self.trainer.world_size, self.trainer.global_rank
        b = self.rows_per_rank
        rows = [
            {"anchor": a, "positive": p, "score": float(s)}
            for step in range(len(ROWS) // (world * b))
            for a, p, s in ROWS[step * world * b + rank * b : step * world * b + (rank + 1) * b]
        ]
        collate = PairCollator(load_tokenizer(self.tokenizer_dir), max_length=32)
        return DataLoader(rows, batch_size=b, shuffle=False, collate_fn=collate)


def _module(bert_dir: str, micro: int | None, gather: bool) -> ContrastiveModule:
    return ContrastiveModule(
        EncoderSettings(backbone=bert_dir, max_length=32, dropout=0.0),
        loss=AnglEObjectiveLoss(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01),
        micro_batch_size=micro,
        gather_across_devices=gather,
    )


def _fit(module, strategy, devices: int, rows_per_rank: int, root: str, bert_dir: str) -> dict[str, torch.Tensor]:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_steps=STEPS,
        gradient_clip_val=1.0,
        precision="32-true",
        use_distributed_sampler=False,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=ShardData(bert_dir, rows_per_rank))
    state = {}
    for name, value in module.backbone.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value  # FSDP2 shards are DTensors
        state[name] = full.detach().cpu().clone()
    return state


def _reference(bert_dir: str, root: str) -> dict[str, torch.Tensor]:
    """One process, no gathering, no GradCache: the global batch of 8 rows per step."""
    L.seed_everything(0)
    return _fit(_module(bert_dir, None, gather=False), "auto", 1, WORLD * PER_RANK, root, bert_dir)


def _worker(rank: int, port: int, bert_dir: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
        HF_HUB_OFFLINE="1",
    )  # processes started here: Lightning joins them instead of launching its own
    torch.set_num_threads(1)
    summary = {}
    for name, (kind, micro) in RUNS.items():
        L.seed_everything(0)
        module = _module(bert_dir, micro, gather=True)
        strategy = "ddp" if kind == "ddp" else FSDP2Strategy()
        state = _fit(module, strategy, WORLD, PER_RANK, os.path.join(out, name), bert_dir)
        sharded = sum(type(m).__name__.startswith("FSDP") for m in module.backbone.modules())
        summary[name] = {"fsdp_modules": sharded}
        if rank == 0:
            torch.save(state, os.path.join(out, f"{name}.pt"))
    if rank == 0:
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("strategies")
    mp.spawn(_worker, args=(_free_port(), str(tiny_bert_dir), str(out)), nprocs=WORLD, join=True)
    reference = _reference(str(tiny_bert_dir), str(out / "ref"))
    initial = _module(str(tiny_bert_dir), None, gather=False)
    initial.configure_model()
    return {
        "reference": reference,
        "initial": initial.backbone.state_dict(),
        "runs": {name: torch.load(out / f"{name}.pt") for name in RUNS},
        "summary": json.loads((out / "summary.json").read_text()),
    }


@pytest.mark.parametrize("run", list(RUNS))
def test_two_process_training_equals_single_process_on_the_global_batch(trained, run):
    reference, state = trained["reference"], trained["runs"][run]
    assert state.keys() == reference.keys()
    moved = [k for k, v in reference.items() if not torch.allclose(v, trained["initial"][k], atol=1e-4)]
    assert len(moved) > 10  # training changed the weights well beyond the tolerance
    for name, value in reference.items():
        torch.testing.assert_close(state[name], value, atol=ATOL, rtol=0, msg=name)


def test_fsdp2_sharded_every_block(trained):
    # tiny BERT: embeddings + 2 layers (its `_no_split_modules`) + the root model
    assert trained["summary"]["fsdp2-gather-gradcache"]["fsdp_modules"] == 4
    assert trained["summary"]["ddp-gather-gradcache"]["fsdp_modules"] == 0


def test_fsdp_strategy_on_cpu_names_fsdp2(tiny_bert_dir, tmp_path):
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=LayerFSDPStrategy(), logger=False, max_steps=1)
    with pytest.raises(ValueError, match="fsdp2"):
        trainer.fit(_module(str(tiny_bert_dir), None, gather=False), datamodule=ShardData(str(tiny_bert_dir), 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("state_dict_type", ["full", "sharded"])
def test_fsdp_strategy_on_gpu_wraps_blocks_trains_and_checkpoints(tiny_bert_dir, tmp_path, state_dict_type):
    from torch.distributed.fsdp import FullyShardedDataParallel

    L.seed_everything(0)
    module = _module(str(tiny_bert_dir), 2, gather=True)
    strategy = LayerFSDPStrategy(state_dict_type=state_dict_type, activation_checkpointing=True)
    trainer = L.Trainer(
        accelerator="cuda",
        devices=1,
        strategy=strategy,
        max_steps=STEPS,
        precision="32-true",
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, datamodule=ShardData(str(tiny_bert_dir), WORLD * PER_RANK))
    units = [m for m in trainer.strategy.model.modules() if isinstance(m, FullyShardedDataParallel)]
    assert len(units) == 4  # root + embeddings + 2 layers
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt").exists()
    with FullyShardedDataParallel.summon_full_params(trainer.strategy.model):
        state = {k: v.detach().cpu().clone() for k, v in module.backbone.state_dict().items()}
    reference = _reference(str(tiny_bert_dir), str(tmp_path / "r"))
    for name, value in reference.items():
        torch.testing.assert_close(state[name], value, atol=ATOL, rtol=0, msg=name)


def test_short_strategy_names_build_lightembeds_strategies():
    import lightembed.strategies  # noqa: F401  (registration happens on import, as the CLI does)

    trainer = L.Trainer(accelerator="cpu", devices=1, strategy="fsdp2", logger=False)
    assert isinstance(trainer.strategy, FSDP2Strategy)
    assert isinstance(L.Trainer(accelerator="cpu", devices=1, strategy="fsdp_blocks").strategy, LayerFSDPStrategy)


def test_cli_fsdp_on_cpu_points_at_fsdp2(tiny_bert_dir, monkeypatch, tmp_path):
    from lightembed.cli import build_cli

    monkeypatch.chdir(tmp_path)
    argv = [
        "--model.class_path",
        "lightembed.stages.ContrastiveModule",
        "--model.init_args.encoder.backbone",
        str(tiny_bert_dir),
    ]
    argv += ["--data.class_path", "lightembed.data.PairDataModule", "--data.init_args.train", "x.jsonl"]
    with pytest.raises(ValueError, match=r"fsdp.*GPU.*--trainer\.strategy fsdp2"):
        build_cli([*argv, "--trainer.accelerator", "cpu", "--trainer.strategy", "fsdp"], run=False)
