"""Dropout SimCSE vs Gumbel-proxy token-deletion SimCSE on the packaged all-MiniLM-L6-v2, same budget and seed.

Both runs train on the same unlabeled sentences (WikiText-2 test paragraphs from the local data, split into
sentences at `` . ``, 5 to 64 words, the first N in file order), one epoch, batch 64, max length 32, AdamW lr 3e-5
(weight decay 0.01), 10% linear warmup, dropout 0.1, InfoNCE τ = 0.05, seed 0, final weights (no checkpoint
selection), bf16-mixed autocast on CPU. The proxy run adds the Gumbel-softmax deletion of
:class:`lightembed.stages.TokenDeletionModule` to the second view (proxy lr 1e-3, target deletion rate 0.1, temperature
1.0 -> 0.1 exponential, soft samples). Reported:

- ``stsb_test``: STS-B test Spearman x100 (cosine; :func:`lightembed.evaluation.sts.evaluate_sts`), encoder alone,
  texts truncated at the training max length 32 for every entry; ``pretrained``: the same before any training (the
  packaged MiniLM scores 82.03 at its usual 128 tokens).
- ``seconds``: wall time of the training loop (no setup, no evaluation); ``cpu_seconds``: the process's CPU time in
  that loop (a fairer comparison when other work shares the machine).
- ``deletion_rate``: after training, the proxy's expected deletion rate ``mean(1 − σ(l))`` over the deletable tokens
  (not special, not padding) of the training sentences; ``keep_prob_sparsity``: how those keep probabilities are
  spread (shares below/above thresholds, quantiles); ``trajectory``: the logged rates during training, to show whether
  the proxy drifts towards keeping every token; ``stsb_test_threshold_deletion``: STS-B with inference deletion.
- ``gumbel_proxy_lr_1e-2``: the same with a 10x proxy learning rate (does the proxy move away from its start?).

    python benchmarks/token_deletion.py [--data-root ../shared/data] [--sentences N]

Writes benchmarks/results/token_deletion.json.
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
from lightembed.data import CorpusDataModule  # noqa: E402
from lightembed.data.collators import PairCollator  # noqa: E402
from lightembed.data.corpus import read_wikitext_lines  # noqa: E402
from lightembed.data.sources import resolve_data_root  # noqa: E402
from lightembed.encoder import (
    EncoderSettings,  # noqa: E402
    TextEncoder,  # noqa: E402
)
from lightembed.evaluation.sts import evaluate_sts  # noqa: E402
from lightembed.stages import ProxySettings, SimCSEModule, TokenDeletionModule  # noqa: E402

MODEL = "packaged:all-MiniLM-L6-v2"
CORPUS, TEST = "corpus/wikitext-2/test.txt", "sts/stsb/test.jsonl"
SENTENCES, BATCH, MAX_LEN, LR, WARMUP, DROPOUT, SEED, PRECISION = 3072, 64, 32, 3e-5, 0.1, 0.1, 0, "bf16-mixed"
PROXY = {"proxy_lr": 1e-3, "target_deletion_rate": 0.1, "deletion_weight": 1.0, "tau": [1.0, 0.1, "exponential"]}
RESULTS = Path(__file__).parent / "results" / "token_deletion.json"


class TrainTimer(L.Callback):
    """Wall time of the training epochs only, and the logged deletion statistics every few steps."""

    def __init__(self, every: int = 8) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.every = every
        self.trajectory: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds += time.perf_counter() - self._start
        self.cpu_seconds += time.process_time() - self._cpu_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if "train/keep_prob_mean" in trainer.callback_metrics and (step % self.every == 0 or step == 1):
            keys = ("train/keep_prob_mean", "train/deletion_rate", "train/keep_prob_saturated", "train/temperature")
            row = {k.split("/")[1]: round(float(trainer.callback_metrics[k]), 4) for k in keys}
            self.trajectory.append({"step": step, **row})


def wikitext_sentences(data_root: str, count: int) -> list[str]:
    """The first ``count`` sentences (5 to 64 words) of the WikiText-2 test paragraphs, split at `` . ``."""
    sentences = []
    for paragraph in read_wikitext_lines(Path(data_root) / CORPUS):
        for piece in paragraph.split(" . "):
            piece = piece.strip()
            words = len(piece.split())
            if 5 <= words <= 64:
                sentences.append(piece if piece.endswith(".") else piece + " .")
            if len(sentences) == count:
                return sentences
    return sentences


def stsb_test(model: TextEncoder, data_root: str) -> float:
    [result] = evaluate_sts(model, {"stsb_test": TEST}, data_root=data_root, batch_size=128)
    return round(result.spearman, 2)


def train(module: L.LightningModule, corpus: Path, data_root: str) -> TrainTimer:
    data = CorpusDataModule(
        train=str(corpus),
        objective="simcse",
        format="lines",
        data_root=data_root,
        tokenizer=MODEL,
        max_length=MAX_LEN,
        batch_size=BATCH,
        seed=SEED,
    )
    timer = TrainTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=PRECISION,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    return timer


def optimizer(params):
    return torch.optim.AdamW(params, lr=LR, weight_decay=0.01)


@torch.no_grad()
def keep_statistics(module: TokenDeletionModule, sentences: list[str]) -> dict:
    """The trained proxy's keep probabilities σ(l) over the deletable tokens of ``sentences``."""
    module.eval()
    tokenize = PairCollator(module.tokenizer, MAX_LEN).encode_texts
    probs = []
    for start in range(0, len(sentences), 256):
        features = tokenize(sentences[start : start + 256])
        logits = module.keep_logits(features)  # (B, L)
        probs.append(torch.sigmoid(logits)[module.deletable(features)])
    p = torch.cat(probs)  # (T,)
    quantiles = torch.quantile(p, torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99]))
    return {
        "deletion_rate": round(float((1 - p).mean()), 4),
        "keep_prob_sparsity": {
            "tokens": p.numel(),
            "share_below_0.5": round(float((p <= 0.5).float().mean()), 4),
            "share_below_0.1": round(float((p <= 0.1).float().mean()), 4),
            "share_above_0.9": round(float((p > 0.9).float().mean()), 4),
            "share_above_0.99": round(float((p > 0.99).float().mean()), 4),
            "quantiles_1_10_50_90_99": [round(float(q), 4) for q in quantiles],
        },
    }


def run_proxy(proxy_lr: float, corpus: Path, sentences: list[str], data_root: str) -> dict:
    """Train the Gumbel-proxy stage with the shared budget and report STS-B and the proxy's keep statistics."""
    L.seed_everything(SEED, verbose=False)
    start, end, schedule = PROXY["tau"]
    module = TokenDeletionModule(
        EncoderSettings(backbone=MODEL, max_length=MAX_LEN, dropout=DROPOUT),
        optimizer=optimizer,
        warmup_ratio=WARMUP,
        proxy=ProxySettings(lr=proxy_lr),
        target_deletion_rate=PROXY["target_deletion_rate"],
        deletion_weight=PROXY["deletion_weight"],
        temperature_start=start,
        temperature_end=end,
        temperature_schedule=schedule,
    )
    timer = train(module, corpus, data_root)
    run = {"stsb_test": stsb_test(module, data_root), "proxy_lr": proxy_lr, **keep_statistics(module, sentences)}
    # threshold deletion at inference (keep_threshold 0.5); with no token below it, it is the plain encoder
    if run["keep_prob_sparsity"]["share_below_0.5"] > 0:
        module.inference_deletion = True
        run["stsb_test_threshold_deletion"] = stsb_test(module, data_root)
        module.inference_deletion = False
    else:
        run["stsb_test_threshold_deletion"] = run["stsb_test"]
    run["seconds"] = round(timer.seconds, 1)
    run["cpu_seconds"] = round(timer.cpu_seconds, 1)
    run["trajectory"] = timer.trajectory
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder with corpus/ and sts/ (else $LIGHTEMBED_DATA)")
    parser.add_argument("--sentences", type=int, default=SENTENCES, help="training sentences (same for both runs)")
    args = parser.parse_args()
    data_root = str(resolve_data_root(args.data_root))
    total_start, total_cpu = time.perf_counter(), time.process_time()
    sentences = wikitext_sentences(data_root, args.sentences)
    runs: dict[str, dict] = {"pretrained": {"stsb_test": stsb_test(load_encoder(MODEL, max_length=MAX_LEN), data_root)}}
    print(f"pretrained: {runs['pretrained']}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "sentences.txt"
        corpus.write_text("\n".join(sentences) + "\n")

        L.seed_everything(SEED, verbose=False)
        simcse = SimCSEModule(
            EncoderSettings(backbone=MODEL, max_length=MAX_LEN, dropout=DROPOUT),
            optimizer=optimizer,
            warmup_ratio=WARMUP,
        )
        timer = train(simcse, corpus, data_root)
        runs["dropout_simcse"] = {
            "stsb_test": stsb_test(simcse, data_root),
            "seconds": round(timer.seconds, 1),
            "cpu_seconds": round(timer.cpu_seconds, 1),
        }
        print(f"dropout_simcse: {runs['dropout_simcse']}", flush=True)

        for name, proxy_lr in (("gumbel_proxy", PROXY["proxy_lr"]), ("gumbel_proxy_lr_1e-2", 1e-2)):
            runs[name] = run_proxy(proxy_lr, corpus, sentences, data_root)
            shown = {k: v for k, v in runs[name].items() if k != "trajectory"}
            print(f"{name}: {shown}", flush=True)

    result = {
        "runs": runs,
        "env": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "cpu": platform.machine(),
            "threads": torch.get_num_threads(),
            "script_seconds": round(time.perf_counter() - total_start, 1),
            "script_cpu_seconds": round(time.process_time() - total_cpu, 1),
            "settings": {
                "model": MODEL,
                "corpus": CORPUS,
                "sentences": len(sentences),
                "batch": BATCH,
                "max_length": MAX_LEN,
                "lr": LR,
                "warmup_ratio": WARMUP,
                "dropout": DROPOUT,
                "seed": SEED,
                "epochs": 1,
                "precision": PRECISION,
                "infonce_temperature": 0.05,
                **PROXY,
            },
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["runs"], indent=2))
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
