"""Evaluation suite on the packaged all-MiniLM-L6-v2: STS-B test, SentEval classification, encode speed.

1. Encode speed, one run, same texts (the 2,551 distinct STS-B test sentences), same batch size: lightembed
   ``encode`` in bf16 and fp32 (length-sorted, ``inference_mode``; bf16 = CPU autocast) versus
   ``SentenceTransformer.encode`` fp32 on the same model folder. Each is timed ``--rounds`` times in rotating order
   after a warm-up; the best round counts (the machine may be shared). The STS-B Spearman of each precision comes
   from the very embeddings that were timed.
2. ``lightembed evaluate packaged:all-MiniLM-L6-v2 --suite sts senteval`` on the local data: STS-B test (the published
   figure for this model is 82.03) and SentEval classification (logistic regression on frozen embeddings: 10-fold CV
   for MR, CR, SUBJ, MPQA; given splits for SST-2, TREC, MRPC). Every distinct text is encoded once per run.
   SST-2's train split holds 67k phrases; ``--max-train`` (default 10,000, stratified) keeps it affordable.

    python benchmarks/eval_minilm.py [--data-root ../shared/data] [--precision float32] [--max-train 10000]

Writes benchmarks/results/eval_minilm.json: {"sts": {...}, "classification": {...}, "encode": {...}, "env": {...}}
(the full evaluate report, with data hashes and package versions, goes to benchmarks/results/eval_minilm_report.json
only with --full-report).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightembed.api import load_encoder  # noqa: E402
from lightembed.data.sources import load_source, resolve_data_root  # noqa: E402
from lightembed.evaluation.commands import evaluate_main  # noqa: E402
from lightembed.evaluation.report import environment  # noqa: E402
from lightembed.evaluation.sts import evaluate_sts  # noqa: E402
from lightembed.packaged import resolve_packaged  # noqa: E402

MODEL = "packaged:all-MiniLM-L6-v2"
STSB_TEST = "sts/stsb/test.jsonl"
SENTEVAL = ["mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc"]
RESULTS = Path(__file__).parent / "results" / "eval_minilm.json"


class Precomputed:
    """Serves embeddings computed (and timed) elsewhere through the ``encode(texts)`` interface."""

    def __init__(self, texts: list[str], embeddings: np.ndarray) -> None:
        self.table = dict(zip(texts, embeddings, strict=True))

    def encode(self, sentences, **kwargs) -> np.ndarray:
        return np.stack([self.table[s] for s in sentences])


def encode_speed(data_root: str, batch_size: int, rounds: int) -> dict:
    """Sentences/s of lightembed bf16/fp32 and SentenceTransformer fp32 on the STS-B test sentences."""
    from sentence_transformers import SentenceTransformer

    rows = load_source(STSB_TEST, ["sentence1", "sentence2"], split="test", data_root=data_root)
    texts = list(dict.fromkeys(list(rows["sentence1"]) + list(rows["sentence2"])))
    ours = load_encoder(MODEL)
    peer = SentenceTransformer(str(resolve_packaged(MODEL)), device="cpu")
    runners = {
        "lightembed_bf16": lambda t: ours.encode(t, batch_size=batch_size, precision="bfloat16").numpy(),
        "lightembed_fp32": lambda t: ours.encode(t, batch_size=batch_size, precision="float32").numpy(),
        "peer_st_fp32": lambda t: peer.encode(t, batch_size=batch_size, convert_to_numpy=True),
    }
    for run in runners.values():  # warm-up: first-call allocations, oneDNN kernel selection
        run(texts[:batch_size])
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    embeddings: dict[str, np.ndarray] = {}
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order every round
            start = time.perf_counter()
            embeddings[name] = runners[name](texts)
            seconds[name].append(time.perf_counter() - start)
            print(f"  round {r + 1} {name}: {len(texts) / seconds[name][-1]:.1f} sentences/s", flush=True)
    per_s = {name: len(texts) / min(values) for name, values in seconds.items()}
    spearman = {}
    for name, emb in embeddings.items():
        [result] = evaluate_sts(Precomputed(texts, emb), {"stsb_test": STSB_TEST}, data_root=data_root)
        spearman[name] = result.spearman
    return {
        "texts": len(texts),
        "per_s": per_s,
        "seconds": seconds,
        "spearman": spearman,
    }


def main() -> None:
    default_root = resolve_data_root(None) or Path(__file__).resolve().parents[2] / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(default_root))
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32", help="of the suite run")
    parser.add_argument("--max-train", type=int, default=10000, help="cap on split training sets (SST-2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per encoder in the speed test")
    parser.add_argument("--skip-speed", action="store_true", help="only the suite (for a quick look)")
    parser.add_argument("--full-report", action="store_true", help="also keep the evaluate command's JSON report")
    ns = parser.parse_args()
    if not Path(ns.data_root).is_dir():
        sys.exit(f"data root {ns.data_root!r} not found: pass --data-root or set $LIGHTEMBED_DATA")
    torch.manual_seed(0)
    started = time.perf_counter()

    speed = None
    if not ns.skip_speed:
        print("encode speed on the STS-B test sentences", flush=True)
        speed = encode_speed(ns.data_root, ns.batch_size, ns.rounds)
    speed_seconds = time.perf_counter() - started

    print("lightembed evaluate", MODEL, "--suite sts senteval", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        argv = [
            MODEL,
            "--suite",
            "sts",
            "senteval",
            "--data-root",
            ns.data_root,
            "--precision",
            ns.precision,
            "--batch-size",
            str(ns.batch_size),
            "--max-train",
            str(ns.max_train),
            "--json",
            str(report_path),
        ]
        report = evaluate_main(argv)
        if ns.full_report:
            target = RESULTS.with_name("eval_minilm_report.json")
            target.write_text(report_path.read_text())
    total = time.perf_counter() - started

    env = environment()
    results = {
        "sts": {name: round(entry["spearman"], 2) for name, entry in report["sts"].items()},
        "classification": {name: round(report["classification"][name]["logreg"]["accuracy"], 2) for name in SENTEVAL},
        "encode": None,
        "env": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.machine(),
            "threads": torch.get_num_threads(),
            "git_commit": env["git_commit"],
            "packages": {k: v for k, v in env["packages"].items() if v},
            "command": "lightembed evaluate " + " ".join(argv[:-2]),
            "classifier": "logreg (StandardScaler + LogisticRegression C=1)",
            "folds": 10,
            "max_train": ns.max_train,
            "suite_precision": ns.precision,
            "batch_size": ns.batch_size,
            "data": {k: [f["sha256"] for f in v.get("files", [])] for k, v in report["data"].items()},
            "suite_encode_per_s": round(report["encode"]["per_s"] or 0.0, 1),
            "speed_seconds": round(speed_seconds, 1),
            "total_seconds": round(total, 1),
        },
    }
    if speed is not None:
        results["encode"] = {
            "lightembed_bf16_per_s": round(speed["per_s"]["lightembed_bf16"], 1),
            "lightembed_fp32_per_s": round(speed["per_s"]["lightembed_fp32"], 1),
            "peer_st_fp32_per_s": round(speed["per_s"]["peer_st_fp32"], 1),
            "stsb_test_bf16": round(speed["spearman"]["lightembed_bf16"], 2),
            "stsb_test_fp32": round(speed["spearman"]["lightembed_fp32"], 2),
        }
        results["env"]["speed_texts"] = speed["texts"]
        results["env"]["peer_st_stsb_test"] = round(speed["spearman"]["peer_st_fp32"], 2)
        results["env"]["bf16_speedup_vs_peer"] = round(
            speed["per_s"]["lightembed_bf16"] / speed["per_s"]["peer_st_fp32"], 2
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("sts", "classification", "encode")}, indent=2))
    print(f"wrote {RESULTS} in {total:.0f}s")


if __name__ == "__main__":
    main()
