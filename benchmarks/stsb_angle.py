"""STS-B fine-tuning of the packaged all-MiniLM-L6-v2: lightembed (AnglE, CoSENT) vs the sentence-transformers trainer.

Same run, same budget for every entry: 1 epoch of STS-B train, batch 16, max length 128, lr 2e-5, 10% linear warmup,
AdamW (weight decay 0.01), seed 0, final weights (no checkpoint selection), STS-B test Spearman x100 computed by the
same evaluator for all. Throughput = training pairs per second of the training loop alone.

    python benchmarks/stsb_angle.py [--data-root ../shared/data] [--limit N]
    python benchmarks/stsb_angle.py --more-seeds 1 2   # peer and lightembed AnglE again with other seeds
    python benchmarks/stsb_angle.py --more-seeds 1 2 --precision 32-true   # the same, lightembed in fp32
    python benchmarks/stsb_angle.py --more-seeds 0 1 --runs lightembed_angle_wise --precision 32-true

Writes benchmarks/results/stsb_angle.json. ``--more-seeds`` keeps the other runs there and adds ``seed_runs``:
``{run: {seed: stsb_test}}`` for the peer and lightembed AnglE (bf16) or the runs named by ``--runs``, so the gap
between them can be told from the seed noise of a 1-epoch fine-tuning (batch order, dropout); a seed-0 run also
becomes that entry of ``runs``. ``lightembed_angle_wise`` is AnglE ending with WiSE-FT weights (``WeightInterpolation``,
alpha chosen on STS-B validation by ``stsb_angle_sweep.py --wise``); ``lightembed_angle_random_batches`` and
``lightembed_cosent_random_batches`` train without length grouping; ``lightembed_angle_all_texts_random_batches`` too,
with AnglE's in-batch term over every text of the batch (``ibn_candidates="all"``).

Random batches are paired with the peer's: lightembed's sampler draws the permutation sentence-transformers' trainer
draws for the same seed, so both see the same batches, and lightembed CoSENT on random batches reproduces the peer's
score (``tests/stages/test_peer_parity.py`` checks the weights on a tiny model). The difference between
``lightembed_angle_random_batches`` and the peer at a seed is then the objective's, free of batch-order noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import EMAWeightAveraging  # noqa: E402

from lightembed.api import load_encoder  # noqa: E402
from lightembed.callbacks import WeightInterpolation  # noqa: E402
from lightembed.data import PairDataModule  # noqa: E402
from lightembed.data.sources import load_source, resolve_data_root  # noqa: E402
from lightembed.evaluation.sts import evaluate_sts  # noqa: E402
from lightembed.losses import AnglELoss, CoSENTLoss  # noqa: E402
from lightembed.packaged import resolve_packaged  # noqa: E402
from lightembed.precision import cpu_has_fast_bf16  # noqa: E402
from lightembed.stages import ContrastiveModule  # noqa: E402

MODEL = "packaged:all-MiniLM-L6-v2"
TRAIN, TEST = "sts/stsb/train.jsonl", "sts/stsb/test.jsonl"
BATCH, MAX_LEN, LR, WARMUP, SEED = 16, 128, 2e-5, 0.1, 0
RESULTS = Path(__file__).parent / "results" / "stsb_angle.json"
# WiSE-FT weight of the fine-tuned weights, chosen on STS-B validation (stsb_angle_sweep.py --wise, seeds 0 and 1).
WISE_ALPHA = 0.5


class TrainTimer(L.Callback):
    """Wall time of the training epochs only (no setup, no evaluation)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds += time.perf_counter() - self._start


def angle() -> AnglELoss:
    """AnglE with the paper's weights and temperatures; on scored STS pairs only pairs scored >= 4 of 5 are in-batch
    positives (a pair scored 0 is not a positive), as in configs/model/angle_minilm.yaml."""
    return AnglELoss(ibn_min_score=4.0)


def angle_all_texts() -> AnglELoss:
    """:func:`angle` with the in-batch term over every text of the batch (``ibn_candidates="all"``), as AnglE's
    reference code computes it, instead of the paper's anchors-against-positives."""
    return AnglELoss(ibn_min_score=4.0, ibn_candidates="all")


def stsb_test(model, data_root: str, split_file: str = TEST) -> float:
    [result] = evaluate_sts(model, {"stsb": split_file}, data_root=data_root, batch_size=128)
    return round(result.spearman, 2)


def train_lightembed(
    loss: torch.nn.Module,
    precision: str,
    length_grouping: bool,
    data_root: str,
    limit: int | None,
    clip: float = 1.0,
    seed: int = SEED,
    dropout: float | None = None,
    ema_decay: float | None = None,
    wise_alpha: float | None = None,
    callbacks: tuple[L.Callback, ...] = (),
) -> tuple[ContrastiveModule, PairDataModule, float]:
    """Train one epoch: the module (final weights; with ``ema_decay`` their exponential moving average, Lightning's
    ``EMAWeightAveraging``; with ``wise_alpha`` their WiSE-FT interpolation with the start), the data and the seconds
    spent training. ``dropout`` overrides the backbone's dropout rates."""
    L.seed_everything(seed, verbose=False)
    module = ContrastiveModule(
        model=MODEL,
        loss=loss,
        pooling="mean",
        max_length=MAX_LEN,
        dropout=dropout,
        optimizer=lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=0.01),
        warmup_ratio=WARMUP,
    )
    data = PairDataModule(
        train=TRAIN,
        train_format="scored_pairs",
        data_root=data_root,
        tokenizer=MODEL,
        max_length=MAX_LEN,
        batch_size=BATCH,
        length_grouping=length_grouping,
        seed=seed,
    )
    timer = TrainTimer()
    callbacks = [timer, *callbacks]
    if ema_decay is not None:
        callbacks.append(EMAWeightAveraging(decay=ema_decay))
    if wise_alpha is not None:
        callbacks.append(WeightInterpolation(alpha=wise_alpha))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        gradient_clip_val=clip,  # the peer's trainer clips the gradient norm at 1.0 by default
        limit_train_batches=(limit // BATCH) if limit else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=data)
    return module, data, timer.seconds


def run_lightembed(
    loss: torch.nn.Module,
    precision: str,
    length_grouping: bool,
    data_root: str,
    limit: int | None,
    seed: int = SEED,
    eval_file: str = TEST,
    **options,
):
    """Train one epoch (``train_lightembed``) and score the weights the run ends with on ``eval_file``."""
    module, data, seconds = train_lightembed(loss, precision, length_grouping, data_root, limit, seed=seed, **options)
    pairs = min(limit or len(data.train_dataset), len(data.train_dataset))
    return {"stsb_test": stsb_test(module, data_root, eval_file), "pairs_per_s": round(pairs / seconds, 2)}


def run_peer(data_root: str, limit: int | None, seed: int = SEED, eval_file: str = TEST):
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss as STCoSENT

    train = load_source(TRAIN, columns=("sentence1", "sentence2", "score"), data_root=data_root)
    if limit:
        train = train.select(range(min(limit, len(train))))
    torch.manual_seed(seed)
    model = SentenceTransformer(str(resolve_packaged(MODEL)), device="cpu")
    model.max_seq_length = MAX_LEN
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out,
            num_train_epochs=1,
            per_device_train_batch_size=BATCH,
            learning_rate=LR,
            warmup_ratio=WARMUP,
            weight_decay=0.01,
            seed=seed,
            save_strategy="no",
            report_to="none",
            logging_steps=1000,
            use_cpu=True,
            dataloader_num_workers=0,
        )
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=STCoSENT(model))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        folder = Path(out) / "final"
        model.save(str(folder))
        score = stsb_test(load_encoder(str(folder)), data_root, eval_file)
    return {"stsb_test": score, "pairs_per_s": round(len(train) / seconds, 2)}


PEER = "peer_st_cosent"  # the sentence-transformers trainer with its CoSENTLoss
# lightembed runs that --more-seeds can add: name -> (loss factory, length-grouped batches, run_lightembed options)
RUNS = {
    "lightembed_angle": (angle, True, {}),
    "lightembed_cosent": (CoSENTLoss, True, {}),
    "lightembed_angle_wise": (angle, True, {"wise_alpha": WISE_ALPHA}),
    # random batches, the same ones the peer's trainer draws (the others group lengths, a throughput lever)
    "lightembed_angle_random_batches": (angle, False, {}),
    "lightembed_cosent_random_batches": (CoSENTLoss, False, {}),
    "lightembed_angle_all_texts_random_batches": (angle_all_texts, False, {}),
}


def run_named(name: str, runs: dict, precision: str, data_root: str, seed: int, eval_file: str = TEST) -> dict:
    """Run ``PEER`` or the lightembed setting ``runs[name]`` = (loss factory, length grouping, options)."""
    if name == PEER:
        return run_peer(data_root, None, seed=seed, eval_file=eval_file)
    make_loss, grouped, options = runs[name]
    return run_lightembed(make_loss(), precision, grouped, data_root, None, seed=seed, eval_file=eval_file, **options)


def more_seeds(
    data_root: str,
    seeds: list[int],
    precision: str = "bf16-mixed",
    names: tuple[str, ...] = (PEER, "lightembed_angle"),
) -> None:
    """Add runs of ``names`` with ``seeds`` to the results file (the other runs there are kept).

    lightembed's fp32 runs (32-true, for CPUs without native bf16) are stored with a ``_fp32`` suffix (fp32 and bf16
    AnglE score alike: 83.08 vs 83.12 at seed 0); the peer always trains in fp32. A seed-0 run is also stored as that
    entry of ``runs``, with its pairs/s.
    """
    result = json.loads(RESULTS.read_text())
    seed_runs = result.setdefault("seed_runs", {})
    for seed in seeds:
        for name in names:
            key = name if precision == "bf16-mixed" or name == PEER else f"{name}_fp32"
            if key in result["runs"]:  # its seed-0 score, measured by the main run
                seed_runs.setdefault(key, {}).setdefault(str(SEED), result["runs"][key]["stsb_test"])
            run = run_named(name, RUNS, precision, data_root, seed)
            seed_runs.setdefault(key, {})[str(seed)] = run["stsb_test"]
            if seed == SEED:
                result["runs"][key] = run
            print(f"{key} seed {seed}: STS-B test {run['stsb_test']:.2f}", flush=True)
            RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_seed_table(seed_runs)
    print(f"wrote {RESULTS}")


def print_seed_table(results: dict[str, dict[str, float]], first: str = "run") -> None:
    """Print ``{name: {seed: spearman}}`` as a markdown table with a column per seed, the mean and the sd."""
    columns = sorted({seed for runs in results.values() for seed in runs}, key=int)
    print(f"| {first} | " + " | ".join(f"seed {s}" for s in columns) + " | mean | sd |")
    print("|---|" + "---:|" * (len(columns) + 2))
    for name, runs in results.items():
        cells = [f"{runs[s]:.2f}" if s in runs else "" for s in columns]
        sd = f"{statistics.stdev(runs.values()):.2f}" if len(runs) > 1 else ""
        print(f"| {name} | " + " | ".join(cells) + f" | {statistics.mean(runs.values()):.2f} | {sd} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder with sts/stsb/*.jsonl (else $LIGHTEMBED_DATA)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N pairs only (smoke runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--more-seeds", nargs="+", type=int, default=None, help="only add runs with these seeds")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=[PEER, "lightembed_angle"],
        choices=[PEER, *RUNS],
        help="with --more-seeds: which runs to add",
    )
    parser.add_argument(
        "--precision",
        default="bf16-mixed",
        choices=["bf16-mixed", "32-true"],
        help="with --more-seeds: lightembed's precision (32-true on CPUs without native bf16)",
    )
    ns = parser.parse_args()
    root = resolve_data_root(ns.data_root)
    if root is None:
        sys.exit("set --data-root or LIGHTEMBED_DATA to the folder holding sts/stsb/ (e.g. ../shared/data)")
    data_root = str(root)
    torch.set_num_threads(ns.threads)
    if not cpu_has_fast_bf16():
        print(
            f"warning: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16; the bf16-mixed runs "
            "are emulated and many times slower than fp32, so their pairs/s say nothing of bf16 on a capable CPU",
            file=sys.stderr,
        )
    if ns.more_seeds:
        more_seeds(data_root, ns.more_seeds, ns.precision, tuple(ns.runs))
        return

    baseline = stsb_test(load_encoder(MODEL), data_root)
    runs = {
        PEER: run_peer(data_root, ns.limit),
        "lightembed_angle": run_lightembed(angle(), "bf16-mixed", True, data_root, ns.limit),
        "lightembed_cosent": run_lightembed(CoSENTLoss(), "bf16-mixed", True, data_root, ns.limit),
        "lightembed_angle_fp32": run_lightembed(angle(), "32-true", True, data_root, ns.limit),
    }
    peer = runs[PEER]
    print(f"\nSTS-B test Spearman x100 before training: {baseline:.2f}")
    print("| run | stsb_test | pairs/s | vs peer (spearman) | vs peer (speed) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in runs.items():
        print(
            f"| {name} | {r['stsb_test']:.2f} | {r['pairs_per_s']:.1f} | {r['stsb_test'] - peer['stsb_test']:+.2f} "
            f"| {r['pairs_per_s'] / peer['pairs_per_s']:.2f}x |"
        )
    result = {
        "runs": runs,
        "baseline_stsb_test": baseline,
        "settings": {
            "batch": BATCH,
            "max_length": MAX_LEN,
            "lr": LR,
            "warmup_ratio": WARMUP,
            "seed": SEED,
            "epochs": 1,
            "limit": ns.limit,
            "threads": ns.threads,
        },
        "env": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_fast_bf16(),
        },
    }
    if ns.limit is None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
