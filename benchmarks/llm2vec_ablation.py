"""LLM2Vec ablation on SmolLM2-135M-Instruct: STS-B test before and after one fixed supervised stage, per start.

Arms (configs/pipelines/llm2vec_ablation.yaml): causal, bidirectional, +MNTP, +SimCSE without MNTP, +MNTP+SimCSE.
For each arm: ``unsupervised_stsb`` (the input of the supervised stage, embedded as that stage embeds it: its pooling,
token limit and attention), ``supervised_stsb`` (the arm's final export) and ``seconds`` = wall time of the stages
the arm trained itself + that of the stages it reused from an earlier arm (both also given apart), so arms compare
at equal cost. Shared stages train once (the pipeline's fingerprints).

    python benchmarks/llm2vec_ablation.py [--data-root ../shared/data] [--output checkpoints/bench_llm2vec_ablation]
    python benchmarks/llm2vec_ablation.py --max-steps 20      # every stage capped at 20 steps: a quick look

Rerunning resumes (finished stages and evaluations are kept). Writes benchmarks/results/llm2vec_ablation.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _flops import cpu_model  # noqa: E402
from lightembed.data.sources import resolve_data_root  # noqa: E402
from lightembed.pipeline import PipelineSpec, load_pipeline, run_pipeline  # noqa: E402
from lightembed.precision import cpu_has_fast_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "configs" / "pipelines" / "llm2vec_ablation.yaml"
ARMS = ("causal", "bidirectional", "mntp", "simcse_only", "mntp_simcse")
RESULTS = Path(__file__).parent / "results" / "llm2vec_ablation.json"


def capped(spec: PipelineSpec, max_steps: int | None) -> PipelineSpec:
    """Every stage stopped after ``max_steps`` optimizer steps (its schedule follows: Lightning's stepping
    estimate honours ``max_steps``); the budget stays the same for every arm."""
    if max_steps is None:
        return spec
    stages = tuple(dataclasses.replace(s, args=(*s.args, f"--trainer.max_steps={max_steps}")) for s in spec.stages)
    return dataclasses.replace(spec, stages=stages)


def spearman(evaluation: dict[str, Any]) -> float:
    """The score of the pipeline's first ``evaluate`` set (Spearman x100)."""
    return round(next(iter(evaluation["sts"].values()))["spearman"], 2)


def stage_precisions(manifest: dict[str, Any]) -> list[str]:
    """The trainer precision every stage ran with, as its saved config records it (``auto`` resolved)."""
    found = set()
    for entry in manifest["arms"].values():
        arm_manifest = Path(entry["run_dir"]) / "manifest.json"
        for record in json.loads(arm_manifest.read_text())["stages"].values():
            found.add(str(((record.get("config") or {}).get("trainer") or {}).get("precision")))
    return sorted(found)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder holding sts/, nli/, corpus/ (else $LIGHTEMBED_DATA)")
    parser.add_argument("--output", default=str(ROOT / "checkpoints" / "bench_llm2vec_ablation"))
    parser.add_argument("--pipeline", default=str(PIPELINE), help="an arms pipeline with the five arms (tests)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every stage at N steps (a shorter budget)")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the JSON")
    parser.add_argument("--threads", type=int, default=2)
    ns = parser.parse_args(argv)
    root = resolve_data_root(ns.data_root)
    if root is None:
        sys.exit("set --data-root or LIGHTEMBED_DATA to the folder holding sts/, nli/ and corpus/ (../shared/data)")
    os.environ["LIGHTEMBED_DATA"] = str(root)  # the stage configs use paths relative to the data root
    if ns.max_steps is not None and ns.max_steps < 1:
        sys.exit(f"--max-steps must be >= 1, got {ns.max_steps}")
    torch.set_num_threads(ns.threads)

    spec = capped(load_pipeline(ns.pipeline, ns.output), ns.max_steps)
    names = tuple(arm.name for arm in spec.arms)
    if sorted(names) != sorted(ARMS) or spec.evaluate is None:
        sys.exit(f"{ns.pipeline}: needs an `evaluate` block and exactly the arms {list(ARMS)}; it has {list(names)}")
    start = time.perf_counter()
    manifest = run_pipeline(spec)
    invocation = time.perf_counter() - start

    arms: dict[str, dict[str, Any]] = {}
    for name in ARMS:
        entry = manifest["arms"][name]
        arms[name] = {
            "unsupervised_stsb": spearman(entry["evaluation"]["last_stage_input"]),
            "supervised_stsb": spearman(entry["evaluation"]["final"]),
            "seconds": entry["seconds"],
            "seconds_trained": entry["seconds_trained"],
            "seconds_reused": entry["seconds_reused"],
            "reused": entry["reused"],
        }
    print("\n| arm | STS-B test before supervised | after supervised | seconds (trained + reused) |")
    print("|---|---:|---:|---:|")
    for name, arm in arms.items():
        print(
            f"| {name} | {arm['unsupervised_stsb']:.2f} | {arm['supervised_stsb']:.2f} | {arm['seconds']:.0f} "
            f"({arm['seconds_trained']:.0f} + {arm['seconds_reused']:.0f}) |"
        )
    trained = sum(arm["seconds_trained"] for arm in arms.values())
    print(f"stages trained: {trained / 60:.1f} min in all (this invocation: {invocation / 60:.1f} min)")
    result = {
        "arms": arms,
        "sts_set": next(iter(manifest["arms"][ARMS[0]]["evaluation"]["final"]["sts"])),
        "pipeline": str(Path(ns.pipeline).resolve().relative_to(ROOT)) if ns.pipeline == str(PIPELINE) else ns.pipeline,
        "max_steps": ns.max_steps,
        "trained_minutes": round(trained / 60, 2),
        "env": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "threads": ns.threads,
            "cpu": cpu_model(),
            "native_bf16": cpu_has_fast_bf16(),
            "precision": stage_precisions(manifest),
        },
    }
    results = Path(ns.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {results}")
    return result


if __name__ == "__main__":
    main()
