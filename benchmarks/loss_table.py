"""The classic loss table: every embedding loss lightembed ships, trained on all-MiniLM-L6-v2 with the same budget.

Each loss trains through ``lightembed fit`` with its shipped configs (``configs/trainer/cpu.yaml``,
``configs/model/<loss>_minilm.yaml`` and the data config of the row format it needs), overriding only what makes the
runs comparable: the seed, the number of optimizer steps, the batch size and the data root (and no validation,
checkpoints, logger or export). Every run starts from the packaged all-MiniLM-L6-v2 and ends with its final weights,
which are scored on STS-B test (Spearman x100 of the cosine) and on TREC and MR classification (SentEval's protocol
as ``lightembed evaluate`` runs it: logistic regression on the frozen embeddings; TREC on its train/test split, MR by
10-fold cross-validation on a fixed stratified sample of ``--mr-rows`` texts, so that scoring each of the 15 models
stays cheap). The untrained model is the reference row.

    python benchmarks/loss_table.py [--data-root ../shared/data] [--steps 150] [--batch-size 32] [--only angle ...]

Which data each loss trains on (a loss needs one row format, so the rows differ; the budget does not):

* scored STS pairs (STS-B train): CoSENT, AnglE, Matryoshka(AnglE);
* 0/1-labelled pairs (MRPC train): contrastive, online contrastive, cosine-similarity regression (its targets must be
  on the cosine's scale, which STS-B's 0-5 scores are not);
* SNLI labelled pairs (entailment 1, contradiction 0): Sentence-BERT's softmax classifier;
* SNLI triplets (premise, entailed, contradicted): triplet, in-batch negatives (MultipleNegativesRanking),
  MegaBatchMargin, GISTEmbed (when ``configs/model/gist_minilm.yaml`` exists);
* (text, class) rows of TREC train in P x K class batches: the four batch triplet losses. Their TREC accuracy is
  measured on TREC's test split after training on its train split, which the other losses never see.

Writes benchmarks/results/loss_table.json: ``{"steps", "batch_size", "seed", "losses": {name: {"data", "stsb_test",
"trec_acc", "mr_acc", "train_seconds"}}, "skipped", "env"}``. ``--only`` adds its rows to a results file of the same
budget (a loss whose config arrived after the main run) and otherwise only prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Timer  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from lightembed.api import load_encoder  # noqa: E402
from lightembed.cli import run_command  # noqa: E402
from lightembed.data.sources import resolve_data_root  # noqa: E402
from lightembed.evaluation.classification import (  # noqa: E402
    SENTEVAL_SETS,
    LabelledSet,
    classify,
    evaluate_classification,
    load_labelled,
)
from lightembed.evaluation.encoding import EncodeCache  # noqa: E402
from lightembed.evaluation.sts import evaluate_sts  # noqa: E402
from lightembed.precision import cpu_has_fast_bf16, resolve_precision  # noqa: E402
from lightembed.provenance import environment  # noqa: E402

MODEL = "packaged:all-MiniLM-L6-v2"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "loss_table.json"
STSB_TEST = "sts/stsb/test.jsonl"
SEED = 0
EVAL_BATCH = 64
# Lightning's Timer, with its arguments spelled out: the command line cannot represent the default's enum
TIMER = json.dumps(
    [{"class_path": "lightning.pytorch.callbacks.Timer", "init_args": {"interval": "step", "verbose": False}}]
)
IN_BATCH_LOSS = json.dumps({"class_path": "lightembed.losses.InBatchNegativesLoss", "init_args": {"temperature": 0.05}})

# name -> (model config, data config, extra `lightembed fit` options). In-batch negatives has no config of its own:
# it is the triplet config with the loss swapped on the command line, as a user would.
LOSSES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "angle": ("angle", "stsb", ()),
    "cosent": ("cosent", "stsb", ()),
    "matryoshka_angle": ("matryoshka", "stsb", ()),
    "cosine_similarity": ("cosine_similarity", "mrpc_pairs", ()),
    "contrastive": ("contrastive", "mrpc_pairs", ()),
    "online_contrastive": ("online_contrastive", "mrpc_pairs", ()),
    "softmax": ("softmax", "snli_labelled_pairs", ()),
    "triplet": ("triplet", "snli_triplets", ()),
    "in_batch_negatives": ("triplet", "snli_triplets", ("--model.init_args.loss", IN_BATCH_LOSS)),
    "mega_batch_margin": ("mega_batch_margin", "snli_triplets", ()),
    "gist": ("gist", "snli_triplets", ()),
    "batch_hard_triplet": ("batch_hard_triplet", "trec_labels", ()),
    "batch_semi_hard_triplet": ("batch_semi_hard_triplet", "trec_labels", ()),
    "batch_all_triplet": ("batch_all_triplet", "trec_labels", ()),
    "batch_hard_soft_margin_triplet": ("batch_hard_soft_margin_triplet", "trec_labels", ()),
}
UNTRAINED = "untrained"


def model_config(name: str) -> Path:
    return ROOT / "configs" / "model" / f"{LOSSES[name][0]}_minilm.yaml"


def fit_args(name: str, steps: int, batch_size: int, seed: int, data_root: str, run_dir: str) -> list[str]:
    """The ``lightembed fit`` command line of one table row: the shipped configs plus the shared budget.

    ``max_epochs -1`` lets ``max_steps`` alone end the run (a small train set is then seen more than once); the
    Timer callback measures the training loop alone (no model load, data read or evaluation). ``run_dir`` takes what
    the command writes besides the weights (its config.yaml).
    """
    _, data, extra = LOSSES[name]
    return [
        "fit",
        *("--config", str(ROOT / "configs/trainer/cpu.yaml")),
        *("--config", str(model_config(name))),
        *("--config", str(ROOT / f"configs/data/{data}.yaml")),
        *("--seed_everything", str(seed), "--data.init_args.seed", str(seed)),
        *("--data.init_args.data_root", data_root, "--data.init_args.batch_size", str(batch_size)),
        *("--data.init_args.val", "{}", "--data.init_args.test", "{}"),
        *("--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0"),
        *("--trainer.default_root_dir", run_dir, "--trainer.logger", "false"),
        *("--trainer.enable_checkpointing", "false"),
        *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
        *("--trainer.callbacks", TIMER),
        *extra,
    ]


def train(name: str, steps: int, batch_size: int, seed: int, data_root: str) -> tuple[torch.nn.Module, float]:
    """Train one row through ``lightembed fit``: the stage with its final weights, and the training seconds."""
    with tempfile.TemporaryDirectory() as run_dir:
        cli = run_command(fit_args(name, steps, batch_size, seed, data_root, run_dir))
    if cli.trainer.global_step != steps:
        raise RuntimeError(f"{name}: trained {cli.trainer.global_step} steps, expected {steps}")
    [timer] = [c for c in cli.trainer.callbacks if isinstance(c, Timer)]
    return cli.model, timer.time_elapsed("train")


def sample_set(data: LabelledSet, rows: int | None, seed: int) -> LabelledSet:
    """A cross-validated set (one ``all`` split) cut to ``rows`` texts, stratified by class; None keeps every row.

    The same rows for every model of the table, so the accuracies compare; the cut only makes the 10-fold protocol
    cheaper to run once per loss.
    """
    items, labels = data.splits["all"]
    if rows is None or rows >= len(labels):
        return data
    keep, _ = train_test_split(np.arange(len(labels)), train_size=rows, stratify=labels, random_state=seed)
    keep = np.sort(keep)  # (rows,) indices in file order
    return replace(data, splits={"all": ([items[i] for i in keep], labels[keep])})


def evaluate(encoder, data_root: str, precision: str, mr: LabelledSet) -> dict[str, float]:
    """STS-B test Spearman and TREC / MR logistic-regression accuracy, x100; each distinct text is encoded once."""
    cache = EncodeCache(encoder, batch_size=EVAL_BATCH, precision=precision)
    [sts] = evaluate_sts(cache, {"stsb": STSB_TEST}, data_root=data_root)
    [trec] = evaluate_classification(cache, {"trec": SENTEVAL_SETS["trec"]}, data_root=data_root, seed=SEED)
    mr_result = classify(mr, cache, seed=SEED)
    return {
        "stsb_test": round(sts.spearman, 2),
        "trec_acc": round(trec.accuracy, 2),
        "mr_acc": round(mr_result.accuracy, 2),
    }


def format_table(rows: dict[str, dict]) -> str:
    """Markdown table of the rows, best STS-B first."""
    lines = [
        "| loss | data | STS-B test | TREC acc | MR acc | train s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, row in sorted(rows.items(), key=lambda item: -item[1]["stsb_test"]):
        seconds = "" if row["train_seconds"] is None else f"{row['train_seconds']:.0f}"
        lines.append(
            f"| {name} | {row['data']} | {row['stsb_test']:.2f} | {row['trec_acc']:.2f} | {row['mr_acc']:.2f} "
            f"| {seconds} |"
        )
    return "\n".join(lines)


def add_rows(previous: dict | None, rows: dict[str, dict], budget: dict[str, int], commit: str | None) -> dict | None:
    """``previous`` results with ``rows`` added (e.g. a loss whose config arrived after the main run), or None when
    ``previous`` is missing or was run with another budget (steps, batch size, seed), whose rows would not compare.
    ``env.added_later`` records the commit each added row ran at."""
    if previous is None or any(previous.get(key) != value for key, value in budget.items()):
        return None
    merged = json.loads(json.dumps(previous))  # a copy
    merged["losses"].update(rows)
    merged["skipped"] = [name for name in merged.get("skipped", []) if name not in rows]
    merged["env"].setdefault("added_later", {}).update(dict.fromkeys(rows, commit))
    return merged


def available(names: list[str]) -> tuple[list[str], list[str]]:
    """The names whose model config exists (and the untrained reference), and the others."""
    present = [n for n in names if n == UNTRAINED or model_config(n).exists()]
    return present, [n for n in names if n not in present]


def main() -> None:
    default_root = resolve_data_root(None) or ROOT.parent / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(default_root), help="folder of the local data ($LIGHTEMBED_DATA)")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per loss")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per batch for every loss")
    parser.add_argument("--mr-rows", type=int, default=4000, help="MR texts cross-validated (stratified; 0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="+", choices=list(LOSSES), default=[], help="leave these losses out")
    parser.add_argument("--only", nargs="+", choices=[UNTRAINED, *LOSSES], default=None, help="run only these")
    ns = parser.parse_args()
    if not (Path(ns.data_root) / "sts" / "stsb").is_dir():
        sys.exit(f"data root {ns.data_root!r} has no sts/stsb: pass --data-root or set $LIGHTEMBED_DATA")
    torch.set_num_threads(ns.threads)
    encode_precision = "bfloat16" if cpu_has_fast_bf16() else "float32"
    started = time.perf_counter()
    names, missing = available([n for n in ns.only or [UNTRAINED, *LOSSES] if n not in ns.skip])
    missing += ns.skip
    mr = sample_set(load_labelled("mr", SENTEVAL_SETS["mr"], ns.data_root), ns.mr_rows or None, SEED)
    for name in missing:
        print(f"skipping {name}", flush=True)
    rows: dict[str, dict] = {}
    for name in names:
        if name == UNTRAINED:
            encoder, seconds, data = load_encoder(MODEL), None, "-"
        else:
            encoder, seconds = train(name, ns.steps, ns.batch_size, SEED, ns.data_root)
            data = LOSSES[name][1]
        eval_start = time.perf_counter()
        rows[name] = {"data": data, **evaluate(encoder, ns.data_root, encode_precision, mr), "train_seconds": seconds}
        if seconds is not None:
            rows[name]["train_seconds"] = round(seconds, 1)
        print(f"{name}: {rows[name]} (eval {time.perf_counter() - eval_start:.0f}s)", flush=True)
    total = time.perf_counter() - started
    print(f"\n{ns.steps} steps x batch {ns.batch_size}, seed {SEED}, {total:.0f}s in all")
    print(format_table(rows))
    if ns.only is not None:
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else None
        budget = {"steps": ns.steps, "batch_size": ns.batch_size, "seed": SEED}
        merged = add_rows(previous, rows, budget, environment()["git_commit"])
        if merged is None:
            print("(--only: not written; the results file holds another budget or none)")
            return
        RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
        print(format_table(merged["losses"]))
        print(f"added {', '.join(rows)} to {RESULTS}")
        return
    env = environment()
    result = {
        "steps": ns.steps,
        "batch_size": ns.batch_size,
        "seed": SEED,
        "losses": rows,
        "skipped": missing,
        "env": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_fast_bf16(),
            "threads": ns.threads,
            "train_precision": resolve_precision("auto", "cpu"),
            "encode_precision": encode_precision,
            "classifier": "logreg (StandardScaler + LogisticRegression C=1); TREC train/test, MR 10-fold",
            "mr_rows": len(mr.splits["all"][1]),
            "git_commit": env["git_commit"],
            "total_seconds": round(total, 1),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
