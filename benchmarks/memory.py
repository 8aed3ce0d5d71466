"""Peak memory and time per sample of a contrastive training step, with and without GradCache.

Runs (each in its own fresh process, so one run's memory cannot hide another's):

* packaged all-MiniLM-L6-v2, full fine-tuning, batch 64 / 256 / 1024, GradCache off and on (micro-batch 32);
* packaged SmolLM2-135M-Instruct with LoRA (r 16), batch 32, gradient checkpointing off and on, GradCache off and on
  (micro-batch 16).

Data: SNLI entailment pairs (premise -> hypothesis) from ``$LIGHTEMBED_DATA/nli/snli/validation.jsonl`` (synthetic
sentences when the folder is absent), max length 32, in-batch negatives loss (InfoNCE, τ = 0.05), AdamW. Each run
times ``--steps`` steps (forward, backward, optimizer step; the first allocates gradients and optimizer state:
its cost is small next to a step's compute on a CPU, and it keeps this script within ~15 minutes on 2 cores).

``peak_mib`` is the training's peak resident memory above the process's memory once the model and data are loaded
(sampled every 2 ms from /proc/self/statm: activations, gradients, optimizer state); CPU memory, not GPU memory.
``seconds_per_sample`` is the mean wall time of a timed step divided by the batch size (pairs).

    python benchmarks/memory.py [--steps 1] [--smoke]

Writes benchmarks/results/memory.json (not with --smoke):
``{"runs": [{"model", "batch", "gradcache", "peak_mib", "seconds_per_sample"}, ...], "env": {...}, "setup": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).parent / "results" / "memory.json"
MAX_LEN = 32
MINILM = "packaged:all-MiniLM-L6-v2"
SMOLLM = "packaged:SmolLM2-135M-Instruct"


def plan(smoke: bool) -> list[dict]:
    if smoke:
        return [
            {"model": MINILM, "batch": 16, "micro": None, "lora": False, "checkpointing": False},
            {"model": MINILM, "batch": 16, "micro": 8, "lora": False, "checkpointing": False},
        ]
    runs = [
        {"model": MINILM, "batch": batch, "micro": micro, "lora": False, "checkpointing": False}
        for batch in (64, 256, 1024)
        for micro in (None, 32)
    ]
    runs += [
        {"model": SMOLLM, "batch": 32, "micro": micro, "lora": True, "checkpointing": checkpointing}
        for checkpointing in (False, True)
        for micro in (None, 16)
    ]
    return runs


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler:
    """Highest resident memory seen while the block runs (a thread samples /proc/self/statm every 2 ms)."""

    def __enter__(self) -> PeakSampler:
        self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def _pairs(count: int) -> list[dict]:
    root = os.environ.get("LIGHTEMBED_DATA")
    path = Path(root) / "nli/snli/validation.jsonl" if root else None
    pairs: list[dict] = []
    if path is not None and path.exists():
        with path.open() as f:
            for line in f:
                row = json.loads(line)
                if row["label"] == "entailment":
                    pairs.append({"anchor": row["premise"], "positive": row["hypothesis"]})
    if len(pairs) < count:  # no data folder: synthetic sentences of similar length
        pairs = [
            {
                "anchor": f"A person number {i} is walking a dog through the park on a sunny day {i % 17}.",
                "positive": f"Someone {i} walks a dog outside {i % 13}.",
            }
            for i in range(count)
        ]
    return pairs[:count]


def worker(spec: dict, steps: int) -> dict:
    import torch

    from lightembed.data.collators import PairCollator
    from lightembed.encoder import EncoderSettings
    from lightembed.losses import InBatchNegativesLoss
    from lightembed.stages import ContrastiveModule

    torch.manual_seed(0)
    module = ContrastiveModule(
        EncoderSettings(
            backbone=spec["model"],
            max_length=MAX_LEN,
            pooling="mean",
            gradient_checkpointing=spec["checkpointing"],
            lora={"r": 16, "alpha": 32, "dropout": 0.05} if spec["lora"] else None,
        ),
        loss=InBatchNegativesLoss(temperature=0.05),
        micro_batch_size=spec["micro"],
    )
    module.configure_model()
    module.train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=2e-5)
    collate = PairCollator(module.tokenizer, max_length=MAX_LEN)
    batch_size = spec["batch"]
    rows = _pairs(batch_size * steps)
    batches = [collate(rows[i * batch_size : (i + 1) * batch_size]) for i in range(steps)]

    def step(batch: dict) -> float:
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    baseline = _rss_mib()
    with PeakSampler() as sampler:
        start = time.perf_counter()
        for batch in batches:
            loss = step(batch)
        elapsed = time.perf_counter() - start
    name = spec["model"].removeprefix("packaged:")
    if spec["lora"]:
        name += "+lora"
    if spec["checkpointing"]:
        name += "+gradient-checkpointing"
    return {
        "model": name,
        "batch": batch_size,
        "gradcache": spec["micro"] is not None,
        "peak_mib": round(sampler.peak - baseline, 1),
        "seconds_per_sample": round(elapsed / steps / batch_size, 5),
        "_micro_batch": spec["micro"],
        "_loss": round(loss, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1, help="timed steps per run")
    parser.add_argument("--smoke", action="store_true", help="two tiny runs, nothing written")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.worker is not None:
        print("RESULT " + json.dumps(worker(json.loads(ns.worker), ns.steps)), flush=True)
        return

    import lightning as L
    import torch

    runs, extra = [], []
    for spec in plan(ns.smoke):
        done = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec), "--steps", str(ns.steps)],
            capture_output=True,
            text=True,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            raise SystemExit(f"run {spec} failed:\n{done.stderr[-3000:]}")
        result = json.loads(lines[-1].removeprefix("RESULT "))
        extra.append({"micro_batch": result.pop("_micro_batch"), "last_loss": result.pop("_loss")})
        runs.append(result)
        print(
            f"{result['model']:<45} batch {result['batch']:>5}  gradcache {result['gradcache']!s:<5}  "
            f"peak {result['peak_mib']:>8.1f} MiB  {result['seconds_per_sample'] * 1000:>8.2f} ms/sample",
            flush=True,
        )
    output = {
        "runs": runs,
        "setup": {
            "max_length": MAX_LEN,
            "loss": "InBatchNegativesLoss(temperature=0.05)",
            "timed_steps": ns.steps,
            "micro_batch": [e["micro_batch"] for e in extra],
            "last_loss": [e["last_loss"] for e in extra],
            "peak_mib": "resident memory above the loaded model and data, peak over the steps (CPU RSS)",
            "data": "SNLI validation entailment pairs"
            if os.environ.get("LIGHTEMBED_DATA")
            else "synthetic sentences (no LIGHTEMBED_DATA)",
        },
        "env": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
        },
    }
    if not ns.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(output, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
