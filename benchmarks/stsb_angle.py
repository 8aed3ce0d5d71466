"""STS-B fine-tuning of the packaged all-MiniLM-L6-v2: lightembed (AnglE, CoSENT) vs the sentence-transformers trainer.

Same run, same budget for every entry: 1 epoch of STS-B train, batch 16, max length 128, lr 2e-5, 10% linear warmup,
fused AdamW (weight decay 0.01, the peer trainer's default optimizer), seed 0, final weights (no checkpoint selection),
STS-B test Spearman x100 computed by the same evaluator for all. Throughput = training pairs per second of the
training loop alone, measured side by side in one invocation.

    python benchmarks/stsb_angle.py [--data-root ../shared/data] [--limit N] [--precision auto]
    python benchmarks/stsb_angle.py --more-seeds 1 2 --precision 32-true   # peer and lightembed AnglE, other seeds
    python benchmarks/stsb_angle.py --more-seeds 0 1 --runs lightembed_angle_wise --precision 32-true

The main run trains lightembed as configs/model/angle_minilm.yaml does: AnglE with the in-batch term over every text
(``ibn_candidates="all"``), random batches, and ``length_chunking`` (each batch embedded in length-sorted chunks: the
same batch with less padding, see ``lightembed.length_chunks``). ``lightembed_angle`` and ``lightembed_cosent`` run in
bf16-mixed on a CPU with native bf16 and in fp32 elsewhere (``--precision auto``; each entry records its precision);
``lightembed_angle_fp32`` is the fp32 run (the same run when the main precision is fp32), and
``lightembed_angle_length_grouped`` swaps chunking for length-grouped batches, the other throughput lever, which
changes the batches.

Writes benchmarks/results/stsb_angle.json: ``runs`` is the latest main run; earlier side-by-side runs and ``seed_runs``
in the file are kept. ``--more-seeds`` adds ``seed_runs``: ``{run: {seed: stsb_test}}`` for the peer and the runs
named by ``--runs`` (fp32 ones with a ``_fp32`` suffix), so the gap between them can be told from the seed noise of a
1-epoch fine-tuning (dropout, and the batch order the seed draws). Besides the main run's settings, ``RUNS`` keeps
the settings of earlier entries: ``angle_paper`` (the paper's in-batch term, anchors against positives) with
length-grouped batches, with WiSE-FT (``_wise``: ``WeightInterpolation``, alpha chosen on STS-B validation by
``stsb_angle_sweep.py --wise``), and on random batches without chunking (``_random_batches``).

Random batches are paired with the peer's: lightembed's sampler draws the permutation sentence-transformers' trainer
draws for the same seed, so both see the same batches, and lightembed CoSENT reproduces the peer's weights
(``tests/stages/test_peer_parity.py`` checks it on a tiny model without dropout, with and without chunking). The
difference between lightembed AnglE and the peer at a seed is then the objective's, free of batch-order noise.
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
from lightembed.encoder import EncoderSettings  # noqa: E402
from lightembed.evaluation.sts import evaluate_sts  # noqa: E402
from lightembed.losses import AnglEObjectiveLoss, CoSENTLoss  # noqa: E402
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


def angle() -> AnglEObjectiveLoss:
    """AnglE with the paper's weights and temperatures; on scored STS pairs only pairs scored >= 4 of 5 are in-batch
    positives (a pair scored 0 is not a positive), as in configs/model/angle_minilm.yaml."""
    return AnglEObjectiveLoss(ibn_min_score=4.0)


def angle_all_texts() -> AnglEObjectiveLoss:
    """:func:`angle` with the in-batch term over every text of the batch (``ibn_candidates="all"``), as AnglE's
    reference code computes it, instead of the paper's anchors-against-positives."""
    return AnglEObjectiveLoss(ibn_min_score=4.0, ibn_candidates="all")


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
    length_chunking: float | None = None,
    callbacks: tuple[L.Callback, ...] = (),
    pool_layers: list[int] | None = None,
) -> tuple[ContrastiveModule, PairDataModule, float]:
    """Train one epoch: the module (final weights; with ``ema_decay`` their exponential moving average, Lightning's
    ``EMAWeightAveraging``; with ``wise_alpha`` their WiSE-FT interpolation with the start), the data and the seconds
    spent training. ``dropout`` overrides the backbone's dropout rates; ``pool_layers`` is the stage's option
    (2D-Matryoshka)."""
    L.seed_everything(seed, verbose=False)
    module = ContrastiveModule(
        EncoderSettings(backbone=MODEL, pooling="mean", max_length=MAX_LEN, dropout=dropout),
        loss=loss,
        optimizer=lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=0.01, fused=True),
        warmup_ratio=WARMUP,
        length_chunking=length_chunking,
        pool_layers=pool_layers,
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
    # --limit stops after the first limit // BATCH batches of the full shuffled set, as lightembed's
    # limit_train_batches does, so both sides train on the same batches (the first rows of the file are short
    # captions: training on them only would inflate the peer's pairs/s).
    steps = limit // BATCH if limit else -1
    torch.manual_seed(seed)
    model = SentenceTransformer(str(resolve_packaged(MODEL)), device="cpu")
    model.max_seq_length = MAX_LEN
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out,
            num_train_epochs=1,
            max_steps=steps,
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
    pairs = min(steps * BATCH, len(train)) if limit else len(train)
    return {"stsb_test": score, "pairs_per_s": round(pairs / seconds, 2)}


PEER = "peer_st_cosent"  # the sentence-transformers trainer with its CoSENTLoss
# per-chunk cost in tokens of lightembed's length chunking, as configs/model/angle_minilm.yaml (64-400 all give
# 1.3-1.5x the pairs/s of unchunked random batches on 2 CPU cores; 160 was the fastest)
CHUNK = {"length_chunking": 160.0}
# lightembed runs: name -> (loss factory, length-grouped batches, run_lightembed options)
RUNS = {
    # the main run (configs/model/angle_minilm.yaml and cosent_minilm.yaml)
    "lightembed_angle": (angle_all_texts, False, CHUNK),
    "lightembed_cosent": (CoSENTLoss, False, CHUNK),
    "lightembed_angle_length_grouped": (angle_all_texts, True, {}),
    # earlier entries of the results file
    "lightembed_angle_paper_grouped": (angle, True, {}),
    "lightembed_cosent_grouped": (CoSENTLoss, True, {}),
    "lightembed_angle_wise": (angle, True, {"wise_alpha": WISE_ALPHA}),
    "lightembed_angle_random_batches": (angle, False, {}),
    "lightembed_cosent_random_batches": (CoSENTLoss, False, {}),
    "lightembed_angle_all_texts_random_batches": (angle_all_texts, False, {}),
}


def run_named(
    name: str,
    runs: dict,
    precision: str,
    data_root: str,
    seed: int = SEED,
    eval_file: str = TEST,
    limit: int | None = None,
) -> dict:
    """Run ``PEER`` or the lightembed setting ``runs[name]`` = (loss factory, length grouping, options)."""
    if name == PEER:
        return run_peer(data_root, limit, seed=seed, eval_file=eval_file)
    make_loss, grouped, options = runs[name]
    return run_lightembed(make_loss(), precision, grouped, data_root, limit, seed=seed, eval_file=eval_file, **options)


def more_seeds(
    data_root: str,
    seeds: list[int],
    precision: str = "bf16-mixed",
    names: tuple[str, ...] = (PEER, "lightembed_angle"),
) -> None:
    """Add the STS-B test scores of ``names`` at ``seeds`` to ``seed_runs`` in the results file (all else is kept).

    lightembed's fp32 runs (32-true, for CPUs without native bf16) are stored with a ``_fp32`` suffix (fp32 and bf16
    AnglE score alike: 83.08 vs 83.12 at seed 0); the peer always trains in fp32. ``runs`` is left alone: its pairs/s
    compare only within the main run's invocation.
    """
    result = json.loads(RESULTS.read_text())
    seed_runs = result.setdefault("seed_runs", {})
    for seed in seeds:
        for name in names:
            run = run_named(name, RUNS, precision, data_root, seed)
            seed_runs.setdefault(seed_key(name, precision), {})[str(seed)] = run["stsb_test"]
            print(f"{seed_key(name, precision)} seed {seed}: STS-B test {run['stsb_test']:.2f}", flush=True)
            RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_seed_table(seed_runs)
    print(f"wrote {RESULTS}")


def seed_key(name: str, precision: str) -> str:
    """The ``seed_runs`` key of a run: lightembed's fp32 runs carry a ``_fp32`` suffix."""
    return name if precision == "bf16-mixed" or name == PEER or name.endswith("_fp32") else f"{name}_fp32"


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
    parser.add_argument("--limit", type=int, default=None, help="train on the first N pairs' batches only (smoke)")
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
        default="auto",
        choices=["auto", "bf16-mixed", "32-true"],
        help="lightembed's precision (auto: bf16-mixed on a CPU with native bf16, else 32-true)",
    )
    ns = parser.parse_args()
    root = resolve_data_root(ns.data_root)
    if root is None:
        sys.exit("set --data-root or LIGHTEMBED_DATA to the folder holding sts/stsb/ (e.g. ../shared/data)")
    data_root = str(root)
    torch.set_num_threads(ns.threads)
    precision = ns.precision
    if precision == "auto":
        precision = "bf16-mixed" if cpu_has_fast_bf16() else "32-true"
    elif precision == "bf16-mixed" and not cpu_has_fast_bf16():
        print(
            f"warning: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16; the bf16-mixed runs "
            "are emulated and many times slower than fp32, so their pairs/s say nothing of bf16 on a capable CPU",
            file=sys.stderr,
        )
    if ns.more_seeds:
        more_seeds(data_root, ns.more_seeds, precision, tuple(ns.runs))
        return

    baseline = stsb_test(load_encoder(MODEL), data_root)
    main_runs = [PEER, "lightembed_angle", "lightembed_cosent", "lightembed_angle_length_grouped"]
    if precision != "32-true":
        main_runs.insert(3, "lightembed_angle_fp32")
    runs = {}
    for name in main_runs:
        run_precision = "32-true" if name == PEER or name.endswith("_fp32") else precision  # the peer trains in fp32
        run = run_named(name.removesuffix("_fp32"), RUNS, run_precision, data_root, limit=ns.limit)
        runs[name] = {**run, "precision": run_precision}
        print(f"{name}: {runs[name]}", flush=True)
    if precision == "32-true":  # no native bf16: the main runs are the fp32 ones
        runs["lightembed_angle_fp32"] = {**runs["lightembed_angle"], "same_run_as": "lightembed_angle"}
    peer = runs[PEER]
    print(f"\nSTS-B test Spearman x100 before training: {baseline:.2f}")
    print("| run | precision | stsb_test | pairs/s | vs peer (spearman) | vs peer (speed) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in runs.items():
        print(
            f"| {name} | {r['precision']} | {r['stsb_test']:.2f} | {r['pairs_per_s']:.1f} "
            f"| {r['stsb_test'] - peer['stsb_test']:+.2f} | {r['pairs_per_s'] / peer['pairs_per_s']:.2f}x |"
        )
    if ns.limit is not None:
        return
    result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    result.update(
        runs=runs,
        baseline_stsb_test=baseline,
        settings={
            "batch": BATCH,
            "max_length": MAX_LEN,
            "lr": LR,
            "warmup_ratio": WARMUP,
            "seed": SEED,
            "epochs": 1,
            "threads": ns.threads,
            **CHUNK,
        },
        env={
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_fast_bf16(),
        },
    )
    seed_runs = result.setdefault("seed_runs", {})
    for name, run in runs.items():
        if "same_run_as" not in run:
            seed_runs.setdefault(seed_key(name, run["precision"]), {})[str(SEED)] = run["stsb_test"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
