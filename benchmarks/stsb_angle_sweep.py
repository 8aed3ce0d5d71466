"""Choose the AnglE loss settings for ``stsb_angle.py`` on the STS-B *validation* split (never on test).

Same budget as the benchmark (1 epoch of STS-B train, batch 16, max length 128, lr 2e-5, 10% warmup, bf16-mixed,
length grouping, seed 0); each setting is scored by cosine Spearman x100 on STS-B validation.

    python benchmarks/stsb_angle_sweep.py [--data-root ../shared/data] [--only NAME ...]

Writes benchmarks/results/stsb_angle_sweep.json (settings merge into an existing file, so runs can be split).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lightembed.data.sources import resolve_data_root
from lightembed.losses import AnglELoss, CoSENTLoss
from stsb_angle import run_lightembed

VALIDATION = "sts/stsb/validation.jsonl"
RESULTS = Path(__file__).parent / "results" / "stsb_angle_sweep.json"

# name -> loss factory. Temperatures as in the AnglE paper unless named; `angle20` is the angle term at scale 20
# (temperature 0.05), the default of the AnglE reference code; `min4`/`min3` count only STS pairs scored >= 4 / >= 3
# as in-batch positives.
SETTINGS = {
    "cosent": lambda: CoSENTLoss(),
    "angle_paper_min4": lambda: AnglELoss(ibn_min_score=4.0),
    "angle_paper_min3": lambda: AnglELoss(ibn_min_score=3.0),
    "angle20_min4": lambda: AnglELoss(angle_temperature=0.05, ibn_min_score=4.0),
    "cosine_angle20": lambda: AnglELoss(ibn_weight=0.0, angle_temperature=0.05),
    "cosine_angle20_w0.02_ibn_min4": lambda: AnglELoss(angle_weight=0.02, angle_temperature=0.05, ibn_min_score=4.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--only", nargs="*", default=None, choices=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=2)
    ns = parser.parse_args()
    root = resolve_data_root(ns.data_root)
    if root is None:
        sys.exit("set --data-root or LIGHTEMBED_DATA to the folder holding sts/stsb/ (e.g. ../shared/data)")
    torch.set_num_threads(ns.threads)
    results = json.loads(RESULTS.read_text())["validation"] if RESULTS.is_file() else {}
    for name in ns.only or list(SETTINGS):
        run = run_lightembed(SETTINGS[name](), "bf16-mixed", True, str(root), None, eval_file=VALIDATION)
        results[name] = run["stsb_test"]
        print(f"{name}: STS-B validation {results[name]:.2f}", flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"validation": results}, indent=2) + "\n")
    print("| setting | STS-B validation Spearman x100 |\n|---|---:|")
    for name, score in sorted(results.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {score:.2f} |")


if __name__ == "__main__":
    main()
