"""LLM2Vec on SmolLM2-135M-Instruct: STS-B test Spearman (mean pooling) after each step, and wall time per stage.

Steps: causal baseline -> bidirectional attention without training -> +MNTP -> +unsupervised SimCSE -> +supervised
(AnglE on SNLI triplets). The three training stages run through the pipeline command with
configs/pipelines/llm2vec_smollm2.yaml; every score comes from the same STS evaluator (cosine Spearman x100, no
instruction, fp32).

    python benchmarks/llm2vec_smollm2.py [--data-root ../shared/data] [--output checkpoints/bench_llm2vec]

Rerunning resumes the pipeline (finished stages are skipped, scored exports are not scored again). Writes
benchmarks/results/llm2vec_smollm2.json.

After the chain, each stage's FLOP/s utilisation on this machine (``utilisation``): a few training steps of the stage
as configured, timed and FLOP-counted by benchmarks/decoder_throughput.py's code, against the 2048x2048 matmul peak in
the precision the stages ran with. ``stage_utilisation`` spreads the same FLOPs per step over the stage's whole wall
time in the chain (model loading, validation and export included): the share of the chain's time doing useful math.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from lightembed.api import load_encoder  # noqa: E402
from lightembed.data.sources import resolve_data_root  # noqa: E402
from lightembed.encoder import (  # noqa: E402
    Encoder,
    EncoderSettings,
    TextEncoder,  # noqa: E402
)
from lightembed.evaluation.sts import evaluate_sts  # noqa: E402
from lightembed.pipeline import load_pipeline, run_pipeline  # noqa: E402
from lightembed.precision import cpu_has_fast_bf16, resolve_precision  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _flops import cpu_model, matmul_peak  # noqa: E402
from decoder_throughput import VARIANTS, measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "configs" / "pipelines" / "llm2vec_smollm2.yaml"
MODEL = "packaged:SmolLM2-135M-Instruct"
TEST = {"stsb_test": "sts/stsb/test.jsonl"}
RESULTS = Path(__file__).parent / "results" / "llm2vec_smollm2.json"


def stsb_test(encoder: TextEncoder, data_root: str) -> float:
    [result] = evaluate_sts(encoder, TEST, data_root=data_root, batch_size=64)
    return round(result.spearman, 2)


def utilisation(threads: int) -> tuple[dict[str, dict[str, Any]], float, str]:
    """Each stage's shipped variant measured as benchmarks/decoder_throughput.py measures it (a few real steps), in
    a fresh interpreter: measured in this process after the chain, the steps ran slower than the chain's own stages
    did, loading, validation and export included."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure_stages, (threads,))


def _measure_stages(threads: int) -> tuple[dict[str, dict[str, Any]], float, str]:
    torch.set_num_threads(threads)
    precision = str(resolve_precision("auto", "cpu"))
    peak = matmul_peak(torch.bfloat16 if precision.startswith("bf16") else torch.float32, threads=threads)
    runs: dict[str, dict[str, Any]] = {}
    for _, stage, overrides, mode in VARIANTS:
        if mode == "shipped" and stage not in runs:  # the first variant of a stage is the configured one
            runs[stage] = measure(stage, overrides, mode, 4, 1, precision, peak, False)
    return runs, peak, precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder holding sts/, nli/, corpus/ (else $LIGHTEMBED_DATA)")
    parser.add_argument("--output", default=str(ROOT / "checkpoints" / "bench_llm2vec_smollm2"))
    parser.add_argument("--threads", type=int, default=2)
    ns = parser.parse_args()
    root = resolve_data_root(ns.data_root)
    if root is None:
        sys.exit("set --data-root or LIGHTEMBED_DATA to the folder holding sts/, nli/ and corpus/ (../shared/data)")
    data_root = str(root)
    os.environ["LIGHTEMBED_DATA"] = data_root  # the stage configs use paths relative to the data root
    torch.set_num_threads(ns.threads)

    # the untrained baselines do not depend on the pipeline: scored once per output folder (5 min of fp32 encoding)
    baselines_file = Path(ns.output) / "baselines.json"
    steps: dict[str, dict[str, float]] = json.loads(baselines_file.read_text()) if baselines_file.is_file() else {}
    for name, bidirectional in (("causal", False), ("bidirectional", True)):
        if name not in steps:
            encoder = Encoder(
                EncoderSettings(backbone=MODEL, pooling="mean", max_length=128, bidirectional=bidirectional)
            )
            steps[name] = {"stsb_test": stsb_test(encoder, data_root)}
            baselines_file.parent.mkdir(parents=True, exist_ok=True)
            baselines_file.write_text(json.dumps(steps, indent=2) + "\n")
        print(f"{name}: {steps[name]['stsb_test']:.2f}", flush=True)

    start = time.perf_counter()
    manifest = run_pipeline(load_pipeline(PIPELINE, ns.output))
    pipeline_seconds = time.perf_counter() - start
    stage_seconds = {}
    final = manifest.get("evaluation") or {}
    # each export scored once: kept in the output folder under the hash of its files (as the pipeline records them)
    scores_file = Path(ns.output) / "scores.json"
    scored: dict[str, dict[str, Any]] = json.loads(scores_file.read_text()) if scores_file.is_file() else {}
    for stage in load_pipeline(PIPELINE, ns.output).stages:
        record = manifest["stages"][stage.name]
        export = hashlib.sha256(json.dumps(record["export_files"], sort_keys=True).encode()).hexdigest()
        if scored.get(stage.name, {}).get("export") == export:
            score = scored[stage.name]["stsb_test"]
        elif final.get("model") == record["output"] and "stsb_test" in final.get("sts", {}):
            # the pipeline's closing evaluation already scored this export with the same evaluator
            score = round(final["sts"]["stsb_test"]["spearman"], 2)
        else:
            score = stsb_test(load_encoder(record["output"], pooling="mean", max_length=128), data_root)
        scored[stage.name] = {"export": export, "stsb_test": score}
        scores_file.write_text(json.dumps(scored, indent=2) + "\n")
        steps[stage.name] = {"stsb_test": score}
        stage_seconds[stage.name] = record["wall_time_s"]
        print(f"{stage.name}: {score:.2f} ({record['wall_time_s']:.0f} s)", flush=True)

    print("\n| step | STS-B test Spearman x100 | stage wall time (s) |")
    print("|---|---:|---:|")
    for name, result in steps.items():
        seconds = stage_seconds.get(name)
        print(f"| {name} | {result['stsb_test']:.2f} | {'' if seconds is None else f'{seconds:.0f}'} |")
    print(f"chain wall time: {sum(stage_seconds.values()) / 60:.1f} min (this invocation: {pipeline_seconds / 60:.1f})")

    runs, peak, precision = utilisation(ns.threads)
    # the same FLOPs per step over the stage's whole wall time, with the optimizer steps the manifest recorded
    stage_use = {
        name: round(run["gflops_per_step"] * 1e9 * manifest["stages"][name]["steps"] / stage_seconds[name] / peak, 4)
        for name, run in runs.items()
    }
    print(f"\nprecision {precision}, matmul peak {peak / 1e9:.0f} GFLOP/s")
    print("| stage | s/step | GFLOP/step | utilisation (steps) | utilisation (whole stage) |")
    print("|---|---:|---:|---:|---:|")
    for name, run in runs.items():
        cells = f"{run['seconds_per_step']:.2f} | {run['gflops_per_step']:.0f} | {run['utilisation']:.1%}"
        cells += f" | {stage_use[name]:.1%}"
        print(f"| {name} | {cells} |")
    result = {
        "steps": steps,
        "stage_seconds": stage_seconds,
        "chain_minutes": round(sum(stage_seconds.values()) / 60, 2),
        "utilisation": {name: run["utilisation"] for name, run in runs.items()},
        "stage_utilisation": stage_use,
        "throughput": {
            name: {k: run[k] for k in ("seconds_per_step", "units_per_s", "unit", "gflops_per_step")}
            for name, run in runs.items()
        },
        "peak_gflops": round(peak / 1e9, 1),
        "pipeline": str(PIPELINE.relative_to(ROOT)),
        "env": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "threads": ns.threads,
            "cpu": cpu_model(),
            "native_bf16": cpu_has_fast_bf16(),
            "precision": precision,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
