"""Mined hard negatives and single- vs mixed-dataset batches: AnglE on the packaged all-MiniLM-L6-v2.

Two training datasets, the same rows in every setting:

- SNLI triplets (premise, entailed hypothesis, contradicting hypothesis) from the local SNLI dev set,
  ``nli/snli/validation.jsonl`` (its first ``--snli`` triplets);
- SICK entailment pairs (``sts/sick/train.jsonl``, label entailment; its first ``--sick`` pairs).

Each row gets one negative, either

- "dataset": SNLI's own contradicting hypothesis; for SICK, which has none, a random SICK sentence (never the
  row's own texts), or
- "mined": the nearest text by the packaged MiniLM itself (``lightembed.mining.mine_hard_negatives``, exact top-k)
  in the dataset's pool (all SNLI dev entailment hypotheses / all SICK train entailment sentences), never the
  anchor or one of its positives, inside the window ``sim <= 0.95`` and ``sim <= sim(anchor, positive) - 0.05``
  (likely false negatives skipped); a row left without a candidate keeps its "dataset" negative,

and the rows are batched either "single" (every batch from one dataset, proportional interleave) or "mixed" (every
batch holds both), with no text twice in a batch. Same budget for all: one epoch, batch 32 (drop_last), max length
128, AnglE with the paper's weights and temperatures (cosine + in-batch + angle on the triplets), AdamW lr 2e-5
(weight decay 0.01), 10% linear warmup, gradient clipping 1.0, bf16-mixed, seed 0, final weights. Score: STS-B test
Spearman x100 of the cosine (``no_training`` is the packaged model before fine-tuning).

    python benchmarks/hard_negatives.py [--data-root ../shared/data] [--snli 1000] [--sick 500]

Writes benchmarks/results/hard_negatives.json: {"runs": {NAME: {"stsb_test": float}}, "env": {...}}.
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

from lightembed.api import load_encoder  # noqa: E402
from lightembed.data import MultiDatasetDataModule, PairSource, load_pairs  # noqa: E402
from lightembed.data.sources import resolve_data_root  # noqa: E402
from lightembed.encoder import EncoderSettings  # noqa: E402
from lightembed.evaluation.sts import evaluate_sts  # noqa: E402
from lightembed.losses import AnglEObjectiveLoss  # noqa: E402
from lightembed.mining import mine_hard_negatives, random_negatives  # noqa: E402
from lightembed.stages import ContrastiveModule  # noqa: E402

MODEL = "packaged:all-MiniLM-L6-v2"
SNLI, SICK, TEST = "nli/snli/validation.jsonl", "sts/sick/train.jsonl", "sts/stsb/test.jsonl"
BATCH, MAX_LEN, LR, WARMUP, SEED = 32, 128, 2e-5, 0.1, 0
MAX_SIM, MARGIN = 0.95, 0.05
RESULTS = Path(__file__).parent / "results" / "hard_negatives.json"


def stsb_test(model, data_root: str) -> float:
    [result] = evaluate_sts(model, {"stsb_test": TEST}, data_root=data_root, batch_size=128)
    return round(result.spearman, 2)


def write_triplets(path: Path, anchors: list[str], positives: list[str], negatives: list[str]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for a, p, n in zip(anchors, positives, negatives, strict=True):
            handle.write(json.dumps({"anchor": a, "positive": p, "negative": n}) + "\n")
    return path


def build_sets(data_root: str, n_snli: int, n_sick: int, folder: Path) -> dict[str, dict[str, Path]]:
    """The training files: {"dataset": {"snli": path, "sick": path}, "mined": {...}}."""
    snli = load_pairs(PairSource(SNLI, format="nli_triplets", limit=n_snli), data_root)
    sick = load_pairs(PairSource(SICK, where={"label": "entailment"}, limit=n_sick), data_root)
    pools = {
        "snli": load_pairs(PairSource(SNLI, format="nli_entailment_pairs"), data_root)["positive"][:],
        "sick": load_pairs(PairSource(SICK, where={"label": "entailment"}), data_root)["positive"][:],
    }
    rows = {
        "snli": (snli["anchor"][:], snli["positive"][:], snli["negative"][:]),
        "sick": (sick["anchor"][:], sick["positive"][:], None),
    }
    encoder = load_encoder(MODEL)
    sets: dict[str, dict[str, Path]] = {"dataset": {}, "mined": {}}
    for name, (anchors, positives, given) in rows.items():
        if given is None:
            given = [n[0] for n in random_negatives(anchors, positives, pools[name], k=1, seed=SEED)]
        start = time.perf_counter()
        mined = mine_hard_negatives(
            anchors,
            positives,
            encoder,
            candidates=pools[name],
            k=1,
            max_sim=MAX_SIM,
            margin=MARGIN,
            batch_size=128,
            precision="bfloat16",
        )
        negatives = [mined.texts(i)[0] if mined.negatives[i] else given[i] for i in range(len(anchors))]
        kept = sum(not n for n in mined.negatives)
        print(
            f"{name}: {len(anchors)} rows, pool {len(mined.candidates)} texts, mined in "
            f"{time.perf_counter() - start:.0f} s ({kept} rows without a candidate keep the dataset negative)"
        )
        sets["dataset"][name] = write_triplets(folder / f"{name}_dataset.jsonl", anchors, positives, given)
        sets["mined"][name] = write_triplets(folder / f"{name}_mined.jsonl", anchors, positives, negatives)
    return sets


def train_and_test(files: dict[str, Path], batching: str, data_root: str) -> tuple[float, float]:
    L.seed_everything(SEED, verbose=False)
    module = ContrastiveModule(
        EncoderSettings(backbone=MODEL, pooling="mean", max_length=MAX_LEN),
        loss=AnglEObjectiveLoss(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=0.01),
        warmup_ratio=WARMUP,
    )
    data = MultiDatasetDataModule(
        train={name: {"source": str(path), "format": "triplets"} for name, path in files.items()},
        batching=batching,
        no_duplicates=True,
        drop_last=True,
        batch_size=BATCH,
        tokenizer=MODEL,
        max_length=MAX_LEN,
        seed=SEED,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        max_epochs=1,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    return stsb_test(module, data_root), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder with nli/snli and sts/ (else $LIGHTEMBED_DATA)")
    parser.add_argument("--snli", type=int, default=1000, help="SNLI triplets per setting")
    parser.add_argument("--sick", type=int, default=500, help="SICK entailment pairs per setting")
    parser.add_argument("--threads", type=int, default=2)
    ns = parser.parse_args()
    root = resolve_data_root(ns.data_root)
    if root is None:
        sys.exit("set --data-root or LIGHTEMBED_DATA to the folder holding nli/snli and sts/ (e.g. ../shared/data)")
    data_root = str(root)
    torch.set_num_threads(ns.threads)
    started = time.perf_counter()

    runs: dict[str, dict[str, float]] = {"no_training": {"stsb_test": stsb_test(load_encoder(MODEL), data_root)}}
    with tempfile.TemporaryDirectory() as tmp:
        sets = build_sets(data_root, ns.snli, ns.sick, Path(tmp))
        for batching in ("single", "mixed"):
            for negatives in ("dataset", "mined"):
                name = f"{batching}_{negatives}_negatives"
                score, seconds = train_and_test(sets[negatives], batching, data_root)
                runs[name] = {"stsb_test": score}
                print(f"{name}: STS-B test {score:.2f} (trained in {seconds:.0f} s)")

    total = time.perf_counter() - started
    print(f"\nSTS-B test Spearman x100 ({ns.snli} SNLI triplets + {ns.sick} SICK pairs, whole script {total:.0f} s)")
    print("| run | stsb_test |\n|---|---:|")
    for name, r in runs.items():
        print(f"| {name} | {r['stsb_test']:.2f} |")
    result = {
        "runs": runs,
        "env": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "threads": ns.threads,
            "snli_triplets": ns.snli,
            "sick_pairs": ns.sick,
            "seconds": round(total, 1),
        },
    }
    if (ns.snli, ns.sick) == (1000, 500):
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
