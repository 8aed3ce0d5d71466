"""Matryoshka and 2D-Matryoshka on the packaged all-MiniLM-L6-v2: truncated and layer-cut embeddings vs a plain run.

Three runs with the recipe of benchmarks/stsb_angle.py (configs/model/angle_minilm.yaml: AnglE with the in-batch term
over every text, 1 epoch of STS-B train, batch 16, lr 2e-5, 10% warmup, length chunking, seed 0, final weights), the
same seed and budget, only the loss differing:

* ``plain``: AnglE on the last layer's full embedding;
* ``matryoshka``: ``MatryoshkaLoss`` over AnglE at dims 384/256/128/64/32 (configs/model/matryoshka_minilm.yaml);
* ``matryoshka_2d``: ``Matryoshka2dLoss`` over AnglE, layers 1..6 pooled from one forward pass, the 2DMSE paper's
  draws (configs/model/matryoshka_2d_minilm.yaml).

``runs``: STS-B test Spearman x100 of ``plain`` and ``matryoshka`` at each dim (the export loaded with
``truncate_dim``; the embeddings of one encode, truncated and renormalised as ``truncate_dim`` does). ``two_d``: for
each (layers, dims) the export loaded with ``Encoder.from_pretrained(export, layers=k, truncate_dim=d)`` (a model
that really runs k layers), its STS-B test Spearman and encode speed (sentences/s over the STS-B test sentences, fp32,
the two models measured alternately in the same invocation), for ``matryoshka_2d`` and the same cut of ``plain``.
A plot of Spearman against sentences/s goes to benchmarks/results/matryoshka_2d.png.

    python benchmarks/matryoshka.py [--data-root ../shared/data] [--limit N] [--precision auto]
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

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchmetrics.functional import spearman_corrcoef  # noqa: E402

from lightembed.data.formats import load_sts  # noqa: E402
from lightembed.data.sources import resolve_data_root  # noqa: E402
from lightembed.encoder import Encoder  # noqa: E402
from lightembed.losses import Matryoshka2dLoss, MatryoshkaLoss  # noqa: E402
from lightembed.precision import cpu_has_fast_bf16, resolve_precision  # noqa: E402
from stsb_angle import BATCH, CHUNK, LR, MAX_LEN, MODEL, SEED, TEST, WARMUP, angle_all_texts, train_lightembed  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "matryoshka.json"
PLOT = Path(__file__).parent / "results" / "matryoshka_2d.png"
DIMS = [384, 256, 128, 64, 32]
LAYERS = [1, 2, 3, 4, 5, 6]  # pooled in the 2D run's training step
CUT_LAYERS, CUT_DIMS = [2, 4, 6], [384, 128, 32]  # the (layers, dims) grid of the 2D comparison


def losses() -> dict[str, tuple[torch.nn.Module, list[int] | None]]:
    """Run name -> (loss, pool_layers)."""
    return {
        "plain": (angle_all_texts(), None),
        "matryoshka": (MatryoshkaLoss(angle_all_texts(), DIMS), None),
        "matryoshka_2d": (
            Matryoshka2dLoss(angle_all_texts(), DIMS, n_layers_per_step=1, n_dims_per_step=1, seed=SEED),
            LAYERS,
        ),
    }


def train(loss: torch.nn.Module, pool_layers: list[int] | None, precision: str, data_root: str, limit: int | None):
    """One epoch with the stsb_angle recipe (its length chunking, random batches); the stage and training seconds."""
    module, _, seconds = train_lightembed(loss, precision, False, data_root, limit, pool_layers=pool_layers, **CHUNK)
    return module, seconds


class STSTest:
    """The STS-B test pairs: each distinct sentence once, cosine Spearman x100 of any embeddings of them."""

    def __init__(self, data_root: str, pairs: int | None = None) -> None:
        rows = load_sts(TEST, "test", data_root)
        rows = rows.select(range(min(pairs, len(rows)))) if pairs else rows  # a smoke run scores the first pairs only
        self.texts = list(dict.fromkeys(list(rows["anchor"]) + list(rows["positive"])))
        index = {t: i for i, t in enumerate(self.texts)}
        self.left = torch.tensor([index[t] for t in rows["anchor"]])
        self.right = torch.tensor([index[t] for t in rows["positive"]])
        self.gold = torch.tensor(rows["score"], dtype=torch.float64)

    def spearman(self, embeddings: torch.Tensor, dim: int | None = None) -> float:
        e = embeddings if dim is None else F.normalize(embeddings[:, :dim], dim=-1)  # (T, d): what truncate_dim gives
        cosine = F.cosine_similarity(e[self.left], e[self.right], dim=-1).double()  # (N,)
        return round(float(spearman_corrcoef(cosine, self.gold)) * 100, 2)

    def encode(self, encoder: Encoder) -> tuple[torch.Tensor, float]:
        """Embeddings ``(T, d)`` and sentences per second of one ``encode`` of every sentence."""
        encoder.encode(self.texts[:64], batch_size=64)  # warm-up: first-call allocations are not the model's speed
        start = time.perf_counter()
        embeddings = encoder.encode(self.texts, batch_size=64)
        return embeddings, round(len(self.texts) / (time.perf_counter() - start), 1)


def two_d(exports: dict[str, Path], sts: STSTest) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{model: {layers: {dims: {"stsb_test", "sentences_per_s"}}}}`` of each cut model, models alternating."""
    result: dict[str, dict[str, dict[str, dict[str, float]]]] = {name: {} for name in exports}
    for k in CUT_LAYERS:
        for d in CUT_DIMS:
            for name, folder in exports.items():
                encoder = Encoder.from_pretrained(str(folder), layers=k, truncate_dim=d)
                embeddings, speed = sts.encode(encoder)
                result[name].setdefault(str(k), {})[str(d)] = {
                    "stsb_test": sts.spearman(embeddings),
                    "sentences_per_s": speed,
                }
                print(f"{name} layers={k} dims={d}: {result[name][str(k)][str(d)]}", flush=True)
    return result


def plot(grid: dict[str, dict[str, dict[str, dict[str, float]]]]) -> None:
    """Spearman against sentences/s, one curve per model through its cuts at full size, every (layers, dims) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, cuts), color in zip(grid.items(), ("tab:gray", "tab:blue"), strict=False):
        full = [(cuts[k][str(CUT_DIMS[0])]["sentences_per_s"], cuts[k][str(CUT_DIMS[0])]["stsb_test"]) for k in cuts]
        ax.plot(*zip(*full, strict=True), "-o", color=color, label=f"{name} ({CUT_DIMS[0]} dims)")
        for k, by_dim in cuts.items():
            for d, r in by_dim.items():
                ax.scatter(r["sentences_per_s"], r["stsb_test"], color=color, s=12, alpha=0.6)
                ax.annotate(f"{k}L/{d}", (r["sentences_per_s"], r["stsb_test"]), fontsize=6, color=color)
    ax.set_xlabel("encode speed (sentences/s, STS-B test, fp32, 2 CPU threads)")
    ax.set_ylabel("STS-B test Spearman x100")
    ax.set_title("all-MiniLM-L6-v2 cut to k layers and d dims: 2D-Matryoshka vs plain AnglE")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder with sts/stsb/*.jsonl (else $LIGHTEMBED_DATA)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N pairs' batches only (smoke)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16-mixed", "32-true"])
    ns = parser.parse_args()
    root = resolve_data_root(ns.data_root)
    if root is None:
        sys.exit("set --data-root or LIGHTEMBED_DATA to the folder holding sts/stsb/ (e.g. ../shared/data)")
    data_root = str(root)
    torch.set_num_threads(ns.threads)
    precision = resolve_precision(ns.precision, "cpu")
    sts = STSTest(data_root, pairs=200 if ns.limit else None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        exports, seconds = {}, {}
        for name, (loss, pool_layers) in losses().items():
            module, seconds[name] = train(loss, pool_layers, precision, data_root, ns.limit)
            exports[name] = module.encoder.save_pretrained(Path(out) / name)
            print(f"trained {name} in {seconds[name]:.0f} s", flush=True)
        runs = {}
        for name in ("plain", "matryoshka"):
            embeddings, _ = sts.encode(Encoder.from_pretrained(str(exports[name])))
            runs[name] = {str(d): sts.spearman(embeddings, d) for d in DIMS}
        grid = two_d({"plain": exports["plain"], "matryoshka_2d": exports["matryoshka_2d"]}, sts)
    plain, mrl = runs["plain"], runs["matryoshka"]
    targets = {
        "matryoshka_64_keeps_97pct_of_its_full": mrl["64"] >= 0.97 * mrl["384"],
        "matryoshka_64_beats_plain_64_by_2": mrl["64"] - plain["64"] >= 2.0,
        "matryoshka_full_loses_at_most_0.3": plain["384"] - mrl["384"] <= 0.3,
    }
    print("\nSTS-B test Spearman x100 at each dim (embeddings truncated and renormalised)")
    print("| run | " + " | ".join(str(d) for d in DIMS) + " |")
    print("|---|" + "---:|" * len(DIMS))
    for name, scores in runs.items():
        print(f"| {name} | " + " | ".join(f"{scores[str(d)]:.2f}" for d in DIMS) + " |")
    print("\n" + "\n".join(f"target {k}: {'met' if v else 'MISSED'}" for k, v in targets.items()))
    print("\n2D: STS-B test Spearman x100 / encode sentences/s of the model cut to k layers and d dims")
    print("| layers | dims | plain | plain sent/s | matryoshka_2d | 2d sent/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k in CUT_LAYERS:
        for d in CUT_DIMS:
            p, m = grid["plain"][str(k)][str(d)], grid["matryoshka_2d"][str(k)][str(d)]
            print(
                f"| {k} | {d} | {p['stsb_test']:.2f} | {p['sentences_per_s']:.0f} | {m['stsb_test']:.2f} "
                f"| {m['sentences_per_s']:.0f} |"
            )
    if ns.limit is not None:
        return
    plot(grid)
    # the format: runs, two_d, env; how the run was made (settings, targets met, training times) is in env
    result = {
        "runs": runs,
        "two_d": grid,
        "env": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "threads": ns.threads,
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_fast_bf16(),
            "training_precision": precision,
            "encode_precision": "float32",
            "wall_seconds": round(time.perf_counter() - started, 1),
            "train_seconds": {k: round(v, 1) for k, v in seconds.items()},
            "targets": targets,
            "settings": {
                "model": MODEL,
                "batch": BATCH,
                "max_length": MAX_LEN,
                "lr": LR,
                "warmup_ratio": WARMUP,
                "seed": SEED,
                "epochs": 1,
                "dims": DIMS,
                "pool_layers_2d": LAYERS,
                "matryoshka_2d": {
                    "n_layers_per_step": 1,
                    "n_dims_per_step": 1,
                    "kl_weight": 1.0,
                    "kl_temperature": 0.3,
                },
                **CHUNK,
            },
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS} and {PLOT}")


if __name__ == "__main__":
    main()
