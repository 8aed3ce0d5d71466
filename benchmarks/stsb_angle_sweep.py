"""Choose the AnglE loss settings for ``stsb_angle.py`` on the STS-B *validation* split (never on test).

Same budget as the benchmark (1 epoch of STS-B train, batch 16, max length 128, lr 2e-5, 10% warmup, bf16-mixed,
length grouping, seed 0); each setting is scored by cosine Spearman x100 on STS-B validation.

    python benchmarks/stsb_angle_sweep.py [--data-root ../shared/data] [--only NAME ...] [--seeds 0 1 2]
    python benchmarks/stsb_angle_sweep.py --precision 32-true --seeds   # print the stored table, run nothing
    python benchmarks/stsb_angle_sweep.py --precision 32-true --wise 0.3 0.5 0.7 --seeds 0 1

``--only peer_st_cosent`` scores the sentence-transformers trainer the same way, for reference. Each setting is a
loss plus whether batches are length-grouped (``_shuffled``: plain random batches, as the peer's
trainer draws them; CoSENT and the in-batch term rank within a batch, so batch composition can matter). Several seeds
tell a setting's effect from seed noise. Writes benchmarks/results/stsb_angle_sweep.json as
``{"validation": {setting: {seed: spearman}}}`` for bf16-mixed runs and ``"validation_32-true"`` for fp32 ones (the
peer always trains in fp32); runs merge into an existing file, so they can be split.

``--wise ALPHA...`` scores WiSE-FT for ``angle_paper_min4``: one training per seed, then the weights
``θ0 + α·(θ − θ0)`` for each alpha (the interpolation ``lightembed.callbacks.WeightInterpolation`` ends a run with),
stored as ``angle_paper_min4_wise<alpha>``; the benchmark's ``WISE_ALPHA`` is the best of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import lightning as L
import torch

from lightembed.callbacks.interpolation import load_interpolation, trainable_weights
from lightembed.data.sources import resolve_data_root
from lightembed.losses import AnglEObjectiveLoss, CoSENTLoss
from stsb_angle import PEER, print_seed_table, run_named, stsb_test, train_lightembed

VALIDATION = "sts/stsb/validation.jsonl"
RESULTS = Path(__file__).parent / "results" / "stsb_angle_sweep.json"

# name -> (loss factory, length-grouped batches, extra options of run_lightembed). Temperatures as in the AnglE paper
# unless named; `angle20` is the angle term at scale 20 (temperature 0.05), the default of the AnglE reference code;
# `min4`/`min3` count only STS pairs scored >= 4 / >= 3 as in-batch positives; `sym` applies the in-batch term in both
# directions; `nodrop` fine-tunes with dropout 0; `ema<d>` scores the exponential moving average of the weights.
SETTINGS = {
    "cosent": (lambda: CoSENTLoss(), True, {}),
    "cosent_shuffled": (lambda: CoSENTLoss(), False, {}),
    "angle_paper_min4": (lambda: AnglEObjectiveLoss(ibn_min_score=4.0), True, {}),
    "angle_paper_min4_shuffled": (lambda: AnglEObjectiveLoss(ibn_min_score=4.0), False, {}),
    "angle_paper_min3": (lambda: AnglEObjectiveLoss(ibn_min_score=3.0), True, {}),
    "angle20_min4": (lambda: AnglEObjectiveLoss(angle_temperature=0.05, ibn_min_score=4.0), True, {}),
    "angle20_min4_shuffled": (lambda: AnglEObjectiveLoss(angle_temperature=0.05, ibn_min_score=4.0), False, {}),
    "cosine_angle20": (lambda: AnglEObjectiveLoss(ibn_weight=0.0, angle_temperature=0.05), True, {}),
    "cosine_angle20_w0.02_ibn_min4": (
        lambda: AnglEObjectiveLoss(angle_weight=0.02, angle_temperature=0.05, ibn_min_score=4.0),
        True,
        {},
    ),
    "angle_paper_min4_sym": (lambda: AnglEObjectiveLoss(ibn_min_score=4.0, ibn_symmetric=True), True, {}),
    "angle_paper_min3_sym": (lambda: AnglEObjectiveLoss(ibn_min_score=3.0, ibn_symmetric=True), True, {}),
    "angle_paper_min4_nodrop": (lambda: AnglEObjectiveLoss(ibn_min_score=4.0), True, {"dropout": 0.0}),
    "cosent_nodrop": (lambda: CoSENTLoss(), True, {"dropout": 0.0}),
    "angle_paper_min4_ema0.99": (lambda: AnglEObjectiveLoss(ibn_min_score=4.0), True, {"ema_decay": 0.99}),
    "cosent_ema0.99": (lambda: CoSENTLoss(), True, {"ema_decay": 0.99}),
}


WISE_SETTING = "angle_paper_min4"


class StartWeights(L.Callback):
    """Keeps the trainable weights as they were when ``fit`` started."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights = trainable_weights(pl_module)


def wise_scores(root: str, precision: str, seed: int, alphas: list[float]) -> dict[str, float]:
    """Train ``WISE_SETTING`` once; STS-B validation of the WiSE-FT weights for every alpha (1.0: plain training)."""
    make_loss, grouped, options = SETTINGS[WISE_SETTING]
    start = StartWeights()
    module, _, _ = train_lightembed(
        make_loss(), precision, grouped, root, None, seed=seed, callbacks=(start,), **options
    )
    end = trainable_weights(module)
    scores = {}
    for alpha in [*alphas, 1.0]:
        load_interpolation(module, start.weights, end, alpha)
        name = WISE_SETTING if alpha == 1.0 else f"{WISE_SETTING}_wise{alpha:g}"
        scores[name] = stsb_test(module, root, VALIDATION)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--only", nargs="*", default=None, choices=[*SETTINGS, PEER])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--wise", nargs="+", type=float, default=None, metavar="ALPHA", help="WiSE-FT alphas to score")
    parser.add_argument(
        "--precision",
        default="bf16-mixed",
        choices=["bf16-mixed", "32-true"],
        help="lightembed runs' precision (bf16 is slow on CPUs without AVX512-BF16); fp32 results are kept apart",
    )
    ns = parser.parse_args()
    root = resolve_data_root(ns.data_root)
    if root is None:
        sys.exit("set --data-root or LIGHTEMBED_DATA to the folder holding sts/stsb/ (e.g. ../shared/data)")
    torch.set_num_threads(ns.threads)
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    key = "validation" if ns.precision == "bf16-mixed" else f"validation_{ns.precision}"
    results: dict[str, dict[str, float]] = stored.setdefault(key, {})
    for seed in ns.seeds:
        if ns.wise:
            scores = wise_scores(str(root), ns.precision, seed, ns.wise).items()
        else:  # lazily, so that each setting is saved as soon as it has run
            scores = (
                (name, run_named(name, SETTINGS, ns.precision, str(root), seed, VALIDATION)["stsb_test"])
                for name in ns.only or list(SETTINGS)
            )
        for name, score in scores:
            results.setdefault(name, {})[str(seed)] = score
            print(f"{name} seed {seed}: STS-B validation {score:.2f}", flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(stored, indent=2) + "\n")
    print(f"{key} (STS-B validation Spearman x100)")
    best_first = sorted(results.items(), key=lambda item: -statistics.mean(item[1].values()))
    print_seed_table(dict(best_first), first="setting")


if __name__ == "__main__":
    main()
