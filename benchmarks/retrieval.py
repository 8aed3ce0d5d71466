"""What in-batch negatives, mined hard negatives and per-dataset batches do for retrieval: packaged all-MiniLM-L6-v2
on the local benchmark of ``benchmarks/build_retrieval.py`` (SNLI premise -> entailed hypothesis; WikiText-2
inverse cloze).

Runs, all from the packaged model with the same seed and budget (one epoch over the same training pairs: SNLI dev
premises not used as dev queries, WikiText-2 validation paragraphs not used as dev queries; batch 32, no text twice
in a batch, drop_last, max length 128, InBatchNegativesLoss at temperature 0.05, AdamW lr 2e-5 with weight decay
0.01, 10% linear warmup, gradient clipping 1.0, final weights; bf16-mixed where this CPU multiplies bf16 natively,
else fp32 (``lightembed.precision.cpu_training_precision``)):

- ``untrained``: the packaged model;
- ``in_batch``: (query, positive) pairs, in-batch negatives only, mixed batches (both datasets in a batch);
- ``mined``: + one hard negative per pair mined by ``lightembed mine-negatives`` with the untrained model from the
  training pool (never the dev/test documents). Two mining settings compete on the **dev** split (mean nDCG@10 over
  both tasks): ``top`` (the nearest non-positive text) and ``relative_margin`` (the nearest text at most 95% as
  similar as the positive, NV-Retriever's TopK-PercPos); the better one is reported;
- ``mined_per_dataset``: the chosen mined setting with per-dataset batches (every batch from one dataset).

Scores on the **test** split: nDCG@10, MRR@10, Recall@100 (mean over the two tasks; per task beside), and STS-B test
Spearman x100. ``seconds``: training + evaluation of the run.

    flock /tmp/lightembed-heavy.lock .venv/bin/python benchmarks/retrieval.py --data-root ../shared/data [--limit N]

``--limit N`` caps every split at N (a smoke run; results are not written). Writes
benchmarks/results/retrieval.json: {"runs": {name: {"ndcg@10", "mrr@10", "recall@100", "stsb_test", "seconds", ...}}}.
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

sys.path.insert(0, str(Path(__file__).parent))
from build_retrieval import build  # noqa: E402
from lightembed.api import load_encoder  # noqa: E402
from lightembed.data import MultiDatasetDataModule  # noqa: E402
from lightembed.data.sources import resolve_data_root  # noqa: E402
from lightembed.encoder import EncoderSettings  # noqa: E402
from lightembed.evaluation.encoding import EncodeCache  # noqa: E402
from lightembed.evaluation.retrieval import evaluate_retrieval_embeddings  # noqa: E402
from lightembed.evaluation.retrieval_data import load_beir  # noqa: E402
from lightembed.evaluation.sts import evaluate_sts  # noqa: E402
from lightembed.losses import InBatchNegativesLoss  # noqa: E402
from lightembed.mining import mine_negatives_main  # noqa: E402
from lightembed.precision import cpu_training_precision  # noqa: E402
from lightembed.stages import ContrastiveModule  # noqa: E402

MODEL = "packaged:all-MiniLM-L6-v2"
BATCH, MAX_LEN, LR, WARMUP, SEED, TEMPERATURE = 32, 128, 2e-5, 0.1, 0, 0.05
SIZES = {"snli_dev": 300, "snli_test": 1000, "snli_train": 1024, "wiki_dev": 200, "wiki_test": 500, "wiki_train": 512}
MINING = {"top": [], "relative_margin": ["--relative-margin", "0.05"]}
TASKS = ("snli", "wiki_ict")
RESULTS = Path(__file__).parent / "results" / "retrieval.json"


def evaluate(model, folder: Path, data_root: str, precision: str) -> dict[str, dict[str, float]]:
    """{"dev"|"test": {"<task>/<metric>": value, "<metric>": mean over tasks}, "stsb_test": ...}; one corpus
    encoding per task serves both splits."""
    cache = EncodeCache(model, batch_size=64, precision=precision)
    out: dict = {"dev": {}, "test": {}}
    for task_name in TASKS:
        corpus_task = load_beir(task_name, str(folder / task_name), split="test")
        corpus = cache.encode(list(corpus_task.corpus.values()))
        for split in ("dev", "test"):
            task = load_beir(task_name, str(folder / task_name), split=split)
            queries = cache.encode([task.queries[q] for q in task.evaluated_queries()])
            metrics = evaluate_retrieval_embeddings(task, queries, corpus, ks=(10, 100))
            for metric in ("ndcg@10", "mrr@10", "recall@100"):
                out[split][f"{task_name}/{metric}"] = round(100 * metrics[metric], 2)
    for split in ("dev", "test"):
        for metric in ("ndcg@10", "mrr@10", "recall@100"):
            out[split][metric] = round(sum(out[split][f"{t}/{metric}"] for t in TASKS) / len(TASKS), 2)
    [sts] = evaluate_sts(cache, {"stsb_test": "sts/stsb/test.jsonl"}, data_root=data_root)
    out["stsb_test"] = round(sts.spearman, 2)
    return out


def mine(folder: Path, work: Path, setting: str, encoder) -> tuple[dict[str, Path], dict]:
    files, stats = {}, {}
    for task in TASKS:
        out = work / f"{task}_{setting}.jsonl"
        provenance = mine_negatives_main(
            [MODEL, "--input", str(folder / task / "train.jsonl"), "--columns", "anchor=anchor", "positive=positive"]
            + ["--pool", "positive", "--output", str(out), "--batch-size", "64", *MINING[setting]],
            encoder=encoder,
        )
        files[task] = out
        stats[task] = {
            "pairs": provenance["pairs"],
            "without_negative": provenance["pairs_without_negative"],
            "positive_sim": provenance["similarity"]["positive"],
            "negative_sim": provenance["similarity"]["negative"],
            "negatives_as_similar_as_positive": provenance["similarity"][
                "negatives_at_least_as_similar_as_the_positive"
            ],
        }
    return files, stats


def train(files: dict[str, Path], fmt: str, batching: str, precision: str, max_steps: int):
    L.seed_everything(SEED, verbose=False)
    columns = {f: f for f in ("anchor", "positive", "negative")[: 2 if fmt == "pairs" else 3]}
    module = ContrastiveModule(
        EncoderSettings(backbone=MODEL, pooling="mean", max_length=MAX_LEN),
        loss=InBatchNegativesLoss(temperature=TEMPERATURE),
        optimizer=lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=0.01),
        warmup_ratio=WARMUP,
    )
    data = MultiDatasetDataModule(
        train={name: {"source": str(path), "format": fmt, "columns": columns} for name, path in files.items()},
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
        precision=precision,
        max_epochs=1,
        max_steps=max_steps,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-root", default=None, help="folder with nli/snli, corpus/ and sts/ (else $LIGHTEMBED_DATA)"
    )
    parser.add_argument("--limit", type=int, default=None, help="smoke run: cap every split at N, 4 steps per run")
    parser.add_argument("--threads", type=int, default=2)
    ns = parser.parse_args()
    root = resolve_data_root(ns.data_root)
    if root is None:
        sys.exit("set --data-root or LIGHTEMBED_DATA to the data folder (e.g. ../shared/data)")
    data_root = str(root)
    torch.set_num_threads(ns.threads)
    precision = cpu_training_precision()
    encode_precision = "bfloat16" if precision == "bf16-mixed" else "float32"
    sizes = {k: min(v, ns.limit) for k, v in SIZES.items()} if ns.limit else dict(SIZES)
    max_steps = 4 if ns.limit else -1
    started = time.perf_counter()
    runs: dict[str, dict] = {}
    candidates: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "benchmark"
        built = build(Path(data_root), folder, seed=SEED, **sizes)
        print(json.dumps(built))
        pairs = {task: folder / task / "train.jsonl" for task in TASKS}

        def record(name: str, model, start: float, **extra) -> dict:
            scores = evaluate(model, folder, data_root, encode_precision)
            entry = {**{m: scores["test"][m] for m in ("ndcg@10", "mrr@10", "recall@100")}}
            entry["stsb_test"] = scores["stsb_test"]
            entry["seconds"] = round(time.perf_counter() - start, 1)
            entry["dev"] = scores["dev"]
            entry["test_per_task"] = {k: v for k, v in scores["test"].items() if "/" in k}
            entry.update(extra)
            print(f"{name}: {json.dumps(entry)}", flush=True)
            return entry

        start = time.perf_counter()
        untrained = load_encoder(MODEL, max_length=MAX_LEN)
        runs["untrained"] = record("untrained", untrained, start)

        start = time.perf_counter()
        runs["in_batch"] = record("in_batch", train(pairs, "pairs", "mixed", precision, max_steps), start)

        mined_files, mining_stats = {}, {}
        for setting in MINING:
            start = time.perf_counter()
            mined_files[setting], mining_stats[setting] = mine(folder, work, setting, untrained)
            model = train(mined_files[setting], "triplets", "mixed", precision, max_steps)
            candidates[setting] = record(f"mined[{setting}]", model, start, mining=mining_stats[setting])
        chosen = max(candidates, key=lambda s: candidates[s]["dev"]["ndcg@10"])
        runs["mined"] = {**candidates[chosen], "setting": chosen}

        start = time.perf_counter()
        model = train(mined_files[chosen], "triplets", "single", precision, max_steps)
        runs["mined_per_dataset"] = record("mined_per_dataset", model, start, setting=chosen)

    total = time.perf_counter() - started
    print(f"\nTest split x100 (mean of snli and wiki_ict; chosen mining setting: {chosen}); whole script {total:.0f} s")
    print("| run | nDCG@10 | MRR@10 | Recall@100 | STS-B test | seconds |\n|---|---:|---:|---:|---:|---:|")
    for name, r in runs.items():
        print(
            f"| {name} | {r['ndcg@10']:.2f} | {r['mrr@10']:.2f} | {r['recall@100']:.2f} | {r['stsb_test']:.2f} | "
            f"{r['seconds']:.0f} |"
        )
    result = {
        "runs": runs,
        "mining_candidates": candidates,
        "chosen_on_dev": chosen,
        "sizes": built,
        "env": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "threads": ns.threads,
            "precision": precision,
            "seconds": round(total, 1),
        },
    }
    if ns.limit is None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
