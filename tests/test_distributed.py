"""Cross-device in-batch negatives on 2 CPU processes (gloo): gathered loss and gradients = single-process full batch.

One spawn serves every check (starting processes is the expensive part): each rank computes its cases, writes
``{case: {"loss": ..., "reference_loss": ..., "grad_error": ...}}`` to a JSON file, and the tests below read them.
Rank batch sizes differ (3 and 5 rows) so the size exchange and the label offsets are exercised too.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lightembed import distributed
from lightembed.encoder import EncoderSettings
from lightembed.losses import AngleDifferenceLoss, AnglEObjectiveLoss, CoSENTLoss, InBatchNegativesLoss

WORLD = 2
SIZES = [3, 5]  # rows on rank 0 and rank 1
N_NEG = 2
# Text ids per rank (the collators' hashes are global text identities; small numbers stand for them here): one text
# recurs inside rank 0's rows (id 0), one inside rank 1's (id 22), and one on both ranks (id 3: rank 0's positive
# 1, rank 1's anchor 1 and negative 3), so duplicates across ranks are exercised too.
LOCAL_IDS = [
    {"anchor": [0, 1, 0], "positive": [2, 3, 4], "negative": [[5, 3], [6, 7], [2, 8]]},
    {
        "anchor": [20, 3, 22, 23, 21],
        "positive": [24, 25, 26, 20, 27],
        "negative": [[28, 29], [24, 30], [31, 32], [3, 22], [34, 25]],
    },
]
LOSS_CASES = {
    "in-batch-hard-negatives-ids": (lambda: InBatchNegativesLoss(), True, False),
    "in-batch-symmetric-ignore-ids": (lambda: InBatchNegativesLoss(symmetric=True, duplicates="ignore"), False, False),
    "cosent-labels": (lambda: CoSENTLoss(), False, True),
    "cosent-triplets": (lambda: CoSENTLoss(), True, False),
    "angle-labels": (lambda: AngleDifferenceLoss(), False, True),
    "angle-combination-labels": (lambda: AnglEObjectiveLoss(), False, True),
    "angle-combination-triplets": (lambda: AnglEObjectiveLoss(), True, False),
}
STAGE_CASES = ["contrastive-gather", "contrastive-gather-gradcache", "simcse-gather-gradcache"]
ROWS = [  # rank 0 takes the first 3 rows, rank 1 the other 5; duplicates inside a rank's rows and across ranks
    ("A man is playing a guitar.", "A man plays the guitar.", "A woman cooks."),
    ("A woman is slicing an onion.", "A woman cuts an onion.", "A man reads."),
    ("A man is playing a guitar.", "Someone plays a guitar.", "A woman cuts an onion."),
    ("Kids are playing football.", "Children play soccer outside.", "A bird is singing."),
    ("The stock market fell today.", "Shares dropped sharply.", "The sky is blue."),
    ("A plane is taking off.", "An airplane departs.", "Children play soccer outside."),
    ("A woman is slicing an onion.", "A man reads.", "She is cooking dinner."),  # rank 0 has this anchor too
    ("Kids are playing football.", "Boys kick a ball.", "A train is late."),
]


def _global_ids() -> dict[str, torch.Tensor]:
    """What the loss must see: the ranks' ids concatenated in rank order."""
    return {
        field: torch.cat([torch.tensor(ids[field]) for ids in LOCAL_IDS])
        for field in ("anchor", "positive", "negative")
    }


def _loss_cases(rank: int) -> dict:
    torch.manual_seed(0)  # the same global data and encoder on every rank
    total, hidden = sum(SIZES), 8
    x = torch.randn(total * (2 + N_NEG), 6, dtype=torch.float64)  # anchors, positives, negatives of the batch
    scores = torch.rand(total, dtype=torch.float64) * 5
    encoder = nn.Linear(6, hidden).double()
    start, stop = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
    global_ids = _global_ids()
    results = {}
    for name, (make_loss, with_negatives, with_labels) in LOSS_CASES.items():
        loss_fn = make_loss()

        def run(
            model, rows: slice, ids: dict, labels, gathered: bool, loss_fn=loss_fn, neg=with_negatives, lab=with_labels
        ):
            a, p, n = x[:total][rows], x[total : 2 * total][rows], x[2 * total :].view(total, N_NEG, 6)[rows]
            count = a.shape[0]
            out = model(torch.cat([a, p, n.reshape(-1, 6)]))  # one forward: (B(2+N), H)
            anchor, positive = out[:count], out[count : 2 * count]  # (B, H) each
            negative = out[2 * count :].view(count, N_NEG, hidden) if neg else None  # (B, N, H)
            if gathered:
                anchor, positive = distributed.gather_with_grad(anchor), distributed.gather_with_grad(positive)
                negative = distributed.gather_with_grad(negative) if negative is not None else None
                labels = distributed.gather(labels)
                ids = distributed.gather_text_ids(ids)
            return loss_fn(
                anchor,
                positive,
                negative,
                labels=labels if lab else None,
                anchor_ids=ids["anchor"],
                positive_ids=ids["positive"],
                negative_ids=ids["negative"] if neg else None,
            )

        reference_model = nn.Linear(6, hidden).double()
        reference_model.load_state_dict(encoder.state_dict())
        reference = run(reference_model, slice(0, total), global_ids, scores, gathered=False)
        reference.backward()
        without_ids = run(reference_model, slice(0, total), dict.fromkeys(global_ids), scores, gathered=False)

        ddp_model = nn.Linear(6, hidden).double()
        ddp_model.load_state_dict(encoder.state_dict())
        ddp = DistributedDataParallel(ddp_model)  # averages gradients over ranks, as in training
        local_ids = {k: torch.tensor(v) for k, v in LOCAL_IDS[rank].items()}
        loss = run(ddp, slice(start, stop), local_ids, scores[start:stop], gathered=True)
        loss.backward()
        grad_error = max(
            (p.grad - q.grad).abs().max().item()
            for p, q in zip(ddp_model.parameters(), reference_model.parameters(), strict=True)
        )
        results[name] = {
            "loss": loss.item(),
            "reference_loss": reference.item(),
            "loss_without_ids": without_ids.item(),
            "grad_error": grad_error,
            "grad_scale": reference_model.weight.grad.abs().max().item(),
        }
    return results


def _stage_cases(rank: int, bert_dir: str) -> dict:
    from lightembed.data.collators import PairCollator, SentenceCollator
    from lightembed.stages import ContrastiveModule, SimCSEModule

    start, stop = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
    results = {}
    for name in STAGE_CASES:
        simcse = name.startswith("simcse")
        micro = 2 if "gradcache" in name else None

        def make(gather: bool, micro_batch_size, simcse=simcse):
            torch.manual_seed(0)
            if simcse:
                module = SimCSEModule(
                    EncoderSettings(backbone=bert_dir, max_length=32),
                    gather_across_devices=gather,
                    micro_batch_size=micro_batch_size,
                )
            else:
                module = ContrastiveModule(
                    EncoderSettings(backbone=bert_dir, max_length=32, dropout=0.0),
                    gather_across_devices=gather,
                    micro_batch_size=micro_batch_size,
                )
            module.configure_model()
            module.eval()  # dropout off: the two processes and the reference must draw nothing at random
            return module

        def collate(rows, tokenizer, simcse=simcse):
            if simcse:
                return SentenceCollator(tokenizer, max_length=32)([r[0] for r in rows])
            return PairCollator(tokenizer, max_length=32)(
                [{"anchor": a, "positive": p, "negative": n} for a, p, n in rows]
            )

        module = make(False, None)
        reference = module.training_step(
            collate(ROWS, module.tokenizer), 0
        )  # one process, the whole batch, no GradCache
        reference.backward()
        reference_grads = {n: p.grad for n, p in module.named_parameters()}

        module = make(True, micro)
        loss = module.training_step(collate(ROWS[start:stop], module.tokenizer), 0)
        loss.backward()
        grad_error, grad_scale = 0.0, 0.0
        for n, p in module.named_parameters():  # what DDP/FSDP do: average the ranks' gradients
            dist.all_reduce(p.grad)
            p.grad /= WORLD
            grad_error = max(grad_error, (p.grad - reference_grads[n]).abs().max().item())
            grad_scale = max(grad_scale, reference_grads[n].abs().max().item())
        results[name] = {
            "loss": loss.item(),
            "reference_loss": reference.item(),
            "grad_error": grad_error,
            "grad_scale": grad_scale,
        }
    return results


def _worker(rank: int, port: int, bert_dir: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {**_loss_cases(rank), **_stage_cases(rank, bert_dir)}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gathered(tiny_bert_dir, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("gathered")
    mp.spawn(_worker, args=(_free_port(), str(tiny_bert_dir), str(out)), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("case", list(LOSS_CASES) + STAGE_CASES)
def test_gathered_loss_and_gradients_equal_the_full_batch(gathered, case):
    tolerance = 1e-10 if case in LOSS_CASES else 1e-5  # float64 linear encoder / float32 tiny BERT
    for rank in range(WORLD):
        result = gathered[rank][case]
        assert result["loss"] == pytest.approx(result["reference_loss"], rel=tolerance, abs=tolerance)
        assert result["grad_scale"] > 1e-3  # the gradients compared are not all ~0
        assert result["grad_error"] <= tolerance * max(1.0, result["grad_scale"])


@pytest.mark.parametrize("case", ["in-batch-hard-negatives-ids", "in-batch-symmetric-ignore-ids"])
def test_duplicate_ids_change_the_gathered_loss(gathered, case):
    """The ids reach the loss after gathering: without them the (equal) reference loss would differ."""
    result = gathered[0][case]
    assert abs(result["reference_loss"] - result["loss_without_ids"]) > 1e-3


def test_single_process_gather_is_the_identity():
    x = torch.randn(3, 4, requires_grad=True)
    assert distributed.gather_with_grad(x) is x
    assert distributed.gather(None) is None
    ids = {"anchor": torch.tensor([0, 1, 0]), "negative": None}
    assert distributed.gather_text_ids(ids)["anchor"] is ids["anchor"]
