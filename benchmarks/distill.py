"""Distilling the packaged all-MiniLM-L6-v2 (6 layers) into its own first 3 layers, against the untrained cut and
the cut fine-tuned directly on STS-B train with AnglE.

Four models, scored by the same STS-B test evaluator (Spearman x100) and timed side by side in one invocation
(``sentences_per_s``: ``Encoder.encode`` of the 2,758 STS-B test sentences, batch 64, after a warm-up pass):

- ``teacher``: the packaged model, 6 layers.
- ``cut``: its first 3 layers, untrained (``Encoder.from_pretrained(..., layers=3)``).
- ``cut_finetuned``: the cut trained with AnglE on STS-B train as benchmarks/stsb_angle.py's main run (1 epoch,
  batch 16, lr 2e-5, 10% warmup, length chunking, AnglE over every text).
- ``distilled``: the cut trained by MSE distillation (``DistillationModule``, loss ``mse``) on sentences from
  ``../shared/data`` — STS-B *train* sentences (no scores), MRPC train and SNLI validation sentences, never STS-B
  test — about as many text encodings as the AnglE run (each of its pairs is two texts). The teacher's embeddings
  are computed once into a fresh cache (its time is reported apart as ``teacher_seconds``).

Training runs in the machine's precision (``resolve_precision("auto")``: bf16-mixed on CPUs with native bf16), and so
does encoding for the speed numbers (bfloat16 autocast there, else float32); scores are computed in float32.

    python benchmarks/distill.py [--data-root ../shared/data] [--sentences 12000] [--limit N]

Writes benchmarks/results/distill.json: ``{"runs": {name: {"stsb_test", "sentences_per_s"}}, "recovered_gap",
"settings", "env"}``; ``recovered_gap`` = (distilled − cut) / (teacher − cut).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from lightembed.data import PairDataModule  # noqa: E402
from lightembed.data.distill import DistillationDataModule  # noqa: E402
from lightembed.data.sources import load_source, resolve_data_root  # noqa: E402
from lightembed.encoder import Encoder, EncoderSettings  # noqa: E402
from lightembed.evaluation.sts import evaluate_sts  # noqa: E402
from lightembed.losses import AnglEObjectiveLoss  # noqa: E402
from lightembed.precision import cpu_has_fast_bf16, resolve_precision  # noqa: E402
from lightembed.stages import ContrastiveModule, DistillationModule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "distill.json"
MODEL = "packaged:all-MiniLM-L6-v2"
LAYERS = 3
TRAIN, TEST = "sts/stsb/train.jsonl", "sts/stsb/test.jsonl"
# distillation sentences: (source, its text columns); STS-B test is never read for training
SENTENCE_SOURCES = (
    (TRAIN, ("sentence1", "sentence2")),
    ("pairs/mrpc/train.jsonl", ("sentence1", "sentence2")),
    ("nli/snli/validation.jsonl", ("premise", "hypothesis")),
)
ANGLE = {"batch": 16, "lr": 2e-5, "warmup": 0.1, "length_chunking": 160.0, "max_length": 128}
DISTILL = {"batch": 32, "lr": 1e-4, "warmup": 0.1, "max_length": 128, "teacher_normalize": False}
SEED = 0


class TrainTimer(L.Callback):
    """Wall time of the training epochs only (no setup, teacher or evaluation)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds += time.perf_counter() - self._start


def trainer(precision: str, timer: TrainTimer, limit_batches: int | None) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        gradient_clip_val=1.0,
        limit_train_batches=limit_batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )


def student() -> EncoderSettings:
    return EncoderSettings(backbone=MODEL, pooling="mean", max_length=128, layers=LAYERS)


def stsb_test(model, data_root: str) -> float:
    [result] = evaluate_sts(model, {"stsb": TEST}, data_root=data_root, batch_size=128)
    return round(result.spearman, 2)


def test_sentences(data_root: str) -> list[str]:
    """The distinct sentences of STS-B test."""
    ds = load_source(TEST, ["sentence1", "sentence2"], data_root=data_root)
    return list(dict.fromkeys([*ds["sentence1"], *ds["sentence2"]]))


def distillation_sentences(data_root: str, count: int, folder: Path) -> Path:
    """``count`` distinct sentences (all of STS-B train's first, then MRPC and SNLI, shuffled) as a jsonl file; a
    sentence that also occurs in STS-B test (some short captions do, in train and in SNLI) is left out."""
    held_out = set(test_sentences(data_root))
    seen: dict[str, None] = {}
    for source, columns in SENTENCE_SOURCES:
        ds = load_source(source, list(columns), data_root=data_root)
        texts = [t for column in columns for t in ds[column]]
        random.Random(SEED).shuffle(texts)
        seen.update(dict.fromkeys(t.strip() for t in texts if t and t.strip() and t not in held_out))
    seen = {t: None for t in seen if t not in held_out}
    texts = list(seen)[:count]
    random.Random(SEED).shuffle(texts)
    path = folder / "sentences.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def train_angle(data_root: str, precision: str, limit: int | None) -> tuple[ContrastiveModule, float, int]:
    L.seed_everything(SEED, verbose=False)
    module = ContrastiveModule(
        student(),
        loss=AnglEObjectiveLoss(ibn_min_score=4.0, ibn_candidates="all"),
        optimizer=lambda params: torch.optim.AdamW(params, lr=ANGLE["lr"], weight_decay=0.01, fused=True),
        warmup_ratio=ANGLE["warmup"],
        length_chunking=ANGLE["length_chunking"],
    )
    data = PairDataModule(
        train=TRAIN, data_root=data_root, tokenizer=MODEL, max_length=128, batch_size=ANGLE["batch"], seed=SEED
    )
    timer = TrainTimer()
    trainer(precision, timer, limit // ANGLE["batch"] if limit else None).fit(module, datamodule=data)
    texts = 2 * min(limit or len(data.train_dataset), len(data.train_dataset))
    return module, timer.seconds, texts


def train_distilled(
    data_root: str, precision: str, sentences: Path, cache: Path, limit: int | None
) -> tuple[DistillationModule, float, float, int]:
    L.seed_everything(SEED, verbose=False)
    module = DistillationModule(
        student(),
        teacher=MODEL,
        loss="mse",
        teacher_normalize=DISTILL["teacher_normalize"],
        teacher_precision="float32",
        cache_dir=str(cache),
        optimizer=lambda params: torch.optim.AdamW(params, lr=DISTILL["lr"], weight_decay=0.01, fused=True),
        warmup_ratio=DISTILL["warmup"],
    )
    data = DistillationDataModule(
        train=str(sentences), train_format="lines", tokenizer=MODEL, max_length=128, batch_size=DISTILL["batch"]
    )
    timer = TrainTimer()
    run = trainer(precision, timer, limit // DISTILL["batch"] if limit else None)
    start = time.perf_counter()
    run.fit(module, datamodule=data)
    teacher_seconds = time.perf_counter() - start - timer.seconds  # setup: reading, the teacher, the cache
    texts = min(limit or len(data.teacher_texts()), len(data.teacher_texts()))
    return module, timer.seconds, teacher_seconds, texts


def sentences_per_s(model: Encoder, texts: list[str], precision: str) -> float:
    model.encode(texts[:256], batch_size=64, precision=precision)  # warm-up
    start = time.perf_counter()
    model.encode(texts, batch_size=64, precision=precision)
    return round(len(texts) / (time.perf_counter() - start), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder with sts/, pairs/, nli/ (else $LIGHTEMBED_DATA)")
    parser.add_argument("--sentences", type=int, default=12000, help="distinct sentences to distil on")
    parser.add_argument("--limit", type=int, default=None, help="train on N rows per run only (smoke; no json)")
    parser.add_argument("--threads", type=int, default=2)
    ns = parser.parse_args()
    root = resolve_data_root(ns.data_root) or ROOT.parent / "shared" / "data"
    if not (root / TEST).exists():
        sys.exit(f"no {TEST} under {root}: set --data-root or LIGHTEMBED_DATA (e.g. ../shared/data)")
    data_root = str(root)
    torch.set_num_threads(ns.threads)
    precision = resolve_precision("auto", "cpu")
    encode_precision = "bfloat16" if precision == "bf16-mixed" else "float32"
    total_start = time.perf_counter()

    with tempfile.TemporaryDirectory() as work:
        sentences = distillation_sentences(data_root, ns.sentences, Path(work))
        angle, angle_seconds, angle_texts = train_angle(data_root, precision, ns.limit)
        print(f"cut_finetuned: {angle_texts} texts in {angle_seconds:.0f} s", flush=True)
        distilled, distill_seconds, teacher_seconds, distill_texts = train_distilled(
            data_root, precision, sentences, Path(work) / "cache", ns.limit
        )
        print(f"distilled: {distill_texts} texts in {distill_seconds:.0f} s (+{teacher_seconds:.0f} s setup)")
    models = {
        "teacher": Encoder.from_pretrained(MODEL),
        "cut": Encoder.from_pretrained(MODEL, layers=LAYERS),
        "cut_finetuned": angle.encoder.eval(),
        "distilled": distilled.encoder.eval(),
    }
    test_texts = test_sentences(data_root)
    runs = {}
    for name, model in models.items():
        runs[name] = {"stsb_test": stsb_test(model, data_root)}
    for name, model in models.items():  # side by side, after every model is loaded
        runs[name]["sentences_per_s"] = sentences_per_s(model, test_texts, encode_precision)
    runs["cut_finetuned"].update(train_seconds=round(angle_seconds, 1), train_texts=angle_texts)
    runs["distilled"].update(
        train_seconds=round(distill_seconds, 1), train_texts=distill_texts, teacher_seconds=round(teacher_seconds, 1)
    )
    gap = runs["teacher"]["stsb_test"] - runs["cut"]["stsb_test"]
    recovered = round((runs["distilled"]["stsb_test"] - runs["cut"]["stsb_test"]) / gap, 3) if gap else None
    total = time.perf_counter() - total_start

    print(f"\nSTS-B test Spearman x100 and encode speed ({encode_precision}, {ns.threads} threads), {LAYERS}-layer cut")
    print("| model | layers | stsb_test | sentences/s | train s |")
    print("|---|---:|---:|---:|---:|")
    for name, run in runs.items():
        layers = 6 if name == "teacher" else LAYERS
        seconds = f"{run['train_seconds']:.0f}" if "train_seconds" in run else ""
        print(f"| {name} | {layers} | {run['stsb_test']:.2f} | {run['sentences_per_s']:.1f} | {seconds} |")
    print(f"distilled recovers {recovered} of the teacher-cut gap ({gap:.2f} points); total {total:.0f} s")
    if ns.limit is not None:
        return
    result = {
        "runs": runs,
        "recovered_gap": recovered,
        "settings": {
            "student_layers": LAYERS,
            "distill": {**DISTILL, "sentences": distill_texts, "sources": [s for s, _ in SENTENCE_SOURCES]},
            "cut_finetuned": {**ANGLE, "loss": "AnglE (ibn_candidates=all, ibn_min_score=4)", "train": TRAIN},
            "epochs": 1,
            "seed": SEED,
            "total_seconds": round(total, 1),
        },
        "env": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "threads": ns.threads,
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_fast_bf16(),
            "precision": precision,
            "encode_precision": encode_precision,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
