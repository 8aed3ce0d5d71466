"""LLM2Vec stages side by side: lightembed vs the llm2vec package (0.2.3), same model, data, batches and steps.

For each stage (MNTP, unsupervised SimCSE, supervised contrastive), lightembed trains first, in this process, through
the stage and data module of its config (configs/stages/<stage>_smollm2.yaml with configs/trainer/cpu.yaml: same
module, data module, precision and gradient clipping as ``lightembed fit``; no validation, checkpoint or export). The
batches it trains on are recorded and the llm2vec package then trains on the same batches in the same order, in a
subprocess of its own virtual environment (benchmarks/peer/llm2vec_driver.py). Settings read from lightembed's
configs so the two stay in sync: batch size, max length, learning rate, warmup ratio, LoRA r/alpha/dropout, mask
probability, SimCSE attention dropout, temperature (llm2vec's loss scale = 1 / temperature), gradient clipping.
Both sides start from the converted ``packaged:SmolLM2-135M-Instruct`` folder with fp32 weights, train with the
precision ``lightembed.precision.resolve_precision("auto")`` picks (bf16 autocast where the CPU multiplies bf16
natively), on the same number of threads.

Throughput counts the steps after ``--warmup-steps`` (wall clock from the end of the last warm-up step to the end of
the last step, data loading included): real (non-padding) tokens per second for MNTP, training rows (sentences for
SimCSE, triplets for supervised) per second otherwise.

    python benchmarks/llm2vec_peer.py [--steps 30] [--warmup-steps 3] [--stages mntp simcse supervised]

The peer environment (benchmarks/.peer-venv) is created on first use: a virtual environment layered over this one
(torch, numpy and the rest come from here through a .pth file) with the pins of benchmarks/peer/requirements.txt
installed from the package index; it is rebuilt when the pins change. Writes benchmarks/results/llm2vec_peer.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _flops import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEER = Path(__file__).parent / "peer"
REQUIREMENTS = PEER / "requirements.txt"
DRIVER = PEER / "llm2vec_driver.py"
VENV = Path(__file__).parent / ".peer-venv"
TRAINER_CONFIG = ROOT / "configs" / "trainer" / "cpu.yaml"
STAGES = {name: ROOT / "configs" / "stages" / f"{name}_smollm2.yaml" for name in ("mntp", "simcse", "supervised")}
TEXT_FIELDS = {"simcse": ("text", "text"), "supervised": ("anchor", "positive", "negative")}
RESULTS = Path(__file__).parent / "results" / "llm2vec_peer.json"
STAMP = "lightembed-peer.json"
LOSS_WINDOW = 5


def stage_settings(stage_config: dict[str, Any], trainer_config: dict[str, Any]) -> dict[str, Any]:
    """What the peer must share with a lightembed stage, read from its parsed YAML configs (stage over trainer)."""
    model = stage_config["model"]["init_args"]
    encoder = model["encoder"]
    data = stage_config["data"]["init_args"]
    lora = encoder.get("lora") or {}
    loss = (model.get("loss") or {}).get("init_args") or {}
    optimizer = model["optimizer"]["init_args"]
    trainer = {**trainer_config.get("trainer", {}), **stage_config.get("trainer", {})}
    return {
        "backbone": encoder["backbone"],
        "batch_size": int(data["batch_size"]),
        "max_length": int(encoder["max_length"]),
        "lr": float(optimizer["lr"]),
        "weight_decay": float(optimizer.get("weight_decay", 0.0)),
        "warmup_ratio": float(model.get("warmup_ratio", 0.1)),
        "lora": {
            "r": int(lora.get("r", 16)),
            "alpha": int(lora.get("alpha", 32)),
            "dropout": float(lora.get("dropout", 0.05)),
        },
        "mask_probability": float(data.get("mask_probability", 0.2)),
        "attention_dropout": float(encoder.get("dropout") or 0.0),
        "temperature": float(loss.get("temperature", 0.05)),
        "max_grad_norm": float(trainer.get("gradient_clip_val") or 0.0),
    }


def mntp_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> list[list[int]]:
    """The unmasked token rows of a lightembed MNTP batch, padding removed: the original id where ``labels`` holds
    one (a masked position), else the input id; ``(B, L)`` tensors -> B lists."""
    original = torch.where(labels != -100, labels, input_ids)  # (B, L)
    return [row[mask.bool()].tolist() for row, mask in zip(original, attention_mask, strict=True)]


def decode_rows(tokenizer: Any, features: dict[str, torch.Tensor]) -> list[str]:
    """The texts of a tokenised field (``input_ids``/``attention_mask`` of ``(B, L)``), special tokens dropped."""
    ids, mask = features["input_ids"], features["attention_mask"]
    rows = (row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True))
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


LINKED_FILES = ("model.safetensors", "generation_config.json")


def legacy_config(config: dict[str, Any]) -> dict[str, Any]:
    """A transformers 5 ``config.json`` as transformers 4.44 reads it: RoPE settings moved from ``rope_parameters``
    back to ``rope_theta``/``rope_scaling`` (4.44 ignores ``rope_parameters`` and would fall back to its default
    theta of 10000) and ``dtype`` back to ``torch_dtype``."""
    legacy = {k: v for k, v in config.items() if k not in ("rope_parameters", "dtype")}
    rope = dict(config.get("rope_parameters") or {})
    if "rope_theta" in rope:
        legacy["rope_theta"] = rope.pop("rope_theta")
    if rope.get("rope_type", "default") != "default":
        legacy["rope_scaling"] = rope
    if "dtype" in config:
        legacy["torch_dtype"] = config["dtype"]
    return legacy


def legacy_tokenizer_config(config: dict[str, Any]) -> dict[str, Any]:
    """A transformers 5 ``tokenizer_config.json`` as transformers 4.44 reads it: the generic fast tokenizer class
    (``TokenizersBackend`` is 5.x's name for it), no 5.x-only keys, and the model inputs a decoder takes (4.44's
    generic class would also return ``token_type_ids``, which Llama's forward refuses)."""
    legacy = {k: v for k, v in config.items() if k not in ("backend", "is_local", "local_files_only")}
    return {
        "model_input_names": ["input_ids", "attention_mask"],
        **legacy,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def legacy_tokenizer(tokenizer: dict[str, Any]) -> dict[str, Any]:
    """A ``tokenizer.json`` of tokenizers >= 0.20 as tokenizers 0.19 reads it: BPE merges as ``"a b"`` strings
    instead of ``["a", "b"]`` pairs (the same merges; byte-level BPE tokens hold no spaces)."""
    model = tokenizer.get("model", {})
    merges = model.get("merges") or []
    if not merges or isinstance(merges[0], str):
        return tokenizer
    if any(" " in part for pair in merges for part in pair):
        raise ValueError("a BPE merge holds a space: it cannot be written in the 'a b' form tokenizers 0.19 reads")
    return {**tokenizer, "model": {**model, "merges": [" ".join(pair) for pair in merges]}}


def peer_model_folder(folder: Path, target: Path) -> Path:
    """The converted model as the peer's transformers reads it: the same weights (linked, not copied) and the same
    configuration and tokenizer, written in the formats of the peer's versions."""
    target.mkdir(parents=True, exist_ok=True)
    for name in LINKED_FILES:
        if (folder / name).exists() and not (target / name).exists():
            (target / name).symlink_to(folder / name)
    config = legacy_config(json.loads((folder / "config.json").read_text()))
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer = legacy_tokenizer_config(json.loads((folder / "tokenizer_config.json").read_text()))
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2) + "\n")
    vocabulary = legacy_tokenizer(json.loads((folder / "tokenizer.json").read_text()))
    (target / "tokenizer.json").write_text(json.dumps(vocabulary, ensure_ascii=False))
    return target


def throughput(units: int, seconds: float) -> float:
    return round(units / seconds, 2) if seconds > 0 else float("nan")


def tail_mean(losses: list[float], window: int = LOSS_WINDOW) -> float:
    """The mean of the last ``window`` step losses (a single step's contrastive loss is noisy)."""
    return round(statistics.fmean(losses[-window:]), 4)


def venv_stamp(requirements: str, base_site: str) -> dict[str, str]:
    """What a peer environment was built from: the pins and the environment it is layered over."""
    return {"requirements_sha256": hashlib.sha256(requirements.encode()).hexdigest(), "base_site": base_site}


def ensure_peer_venv(venv: Path) -> Path:
    """The peer environment's Python, creating or rebuilding the environment when its stamp does not match."""
    base_site = sysconfig.get_paths()["purelib"]
    stamp = venv_stamp(REQUIREMENTS.read_text(), base_site)
    python = venv / "bin" / "python"
    with contextlib.suppress(OSError, ValueError):
        if json.loads((venv / STAMP).read_text()) == stamp and python.exists():
            return python
    print(f"creating the peer environment in {venv} (pins: {REQUIREMENTS.relative_to(ROOT)})", flush=True)
    base_python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(base_python), "-m", "venv", "--clear", str(venv)], check=True)
    peer_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # lightembed's packages after the peer's own: torch and numpy are shared, the pinned ones shadow ours
    (Path(peer_site) / "lightembed-base.pth").write_text(base_site + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    (venv / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return python


class Recorder(L.Callback):
    """Keeps each training batch, each step's loss and the wall-clock time at the end of each step."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.losses: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batches.append(batch)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.ends.append(time.perf_counter())
        self.losses.append(float(outputs["loss"]))


def run_lightembed(stage: str, steps: int, warmup: int, precision: str) -> tuple[dict[str, Any], Recorder, Any]:
    """Train ``warmup + steps`` steps of lightembed's stage; its timing, losses, recorded batches and data module."""
    from lightembed.fit import Trainer, build_cli

    cli = build_cli(["--config", str(TRAINER_CONFIG), "--config", str(STAGES[stage])], run=False, exit_on_error=False)
    settings = stage_settings(yaml.safe_load(STAGES[stage].read_text()), yaml.safe_load(TRAINER_CONFIG.read_text()))
    recorder = Recorder()
    L.seed_everything(0, verbose=False)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=warmup + steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=settings["max_grad_norm"] or None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = recorder.ends[-1] - recorder.ends[warmup - 1]
    return {"seconds": seconds, "losses": recorder.losses}, recorder, cli.datamodule


def peer_batches(stage: str, recorder: Recorder, tokenizer: Any) -> tuple[list[dict[str, Any]], list[int]]:
    """The recorded batches in the driver's format and each batch's real token count."""
    batches, tokens = [], []
    for batch in recorder.batches:
        if stage == "mntp":
            rows = mntp_rows(batch["input_ids"], batch["attention_mask"], batch["labels"])
            batches.append({"rows": rows})
            tokens.append(sum(len(row) for row in rows))
        else:
            fields = [decode_rows(tokenizer, batch[name]) for name in TEXT_FIELDS[stage]]
            batches.append({"fields": fields})
            tokens.append(sum(int(batch[name]["attention_mask"].sum()) for name in TEXT_FIELDS[stage]))
    return batches, tokens


def run_peer(python: Path, spec: dict[str, Any], scratch: Path) -> dict[str, Any]:
    spec_file, output = scratch / f"{spec['stage']}_spec.json", scratch / f"{spec['stage']}_peer.json"
    spec_file.write_text(json.dumps(spec))
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore"}
    subprocess.run([str(python), str(DRIVER), str(spec_file), str(output)], check=True, env=env)
    return json.loads(output.read_text())


def modified_files() -> list[str]:
    """Files under src/ and configs/ that differ from the checked-out commit (empty outside a git checkout)."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        command = ["git", "status", "--porcelain", "--", "src", "configs"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        return sorted(line[3:] for line in done.stdout.splitlines())
    return []


def run_stage(stage: str, ns: argparse.Namespace, python: Path, precision: str, scratch: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from lightembed.packaged import resolve_packaged

    settings = stage_settings(yaml.safe_load(STAGES[stage].read_text()), yaml.safe_load(TRAINER_CONFIG.read_text()))
    folder = resolve_packaged(settings["backbone"])
    print(f"[{stage}] lightembed: {ns.warmup_steps} warm-up + {ns.steps} timed steps", flush=True)
    ours, recorder, _ = run_lightembed(stage, ns.steps, ns.warmup_steps, precision)
    batches, tokens = peer_batches(stage, recorder, AutoTokenizer.from_pretrained(folder))
    batches_file = scratch / f"{stage}_batches.json"
    batches_file.write_text(json.dumps(batches))
    spec = {
        **settings,
        "stage": stage,
        "model": str(peer_model_folder(folder, scratch / "peer_model")),
        "batches": str(batches_file),
        "bf16": precision == "bf16-mixed",
        "threads": ns.threads,
        "warmup_steps": ns.warmup_steps,
        "seed": 0,
    }
    print(f"[{stage}] llm2vec: the same {len(batches)} batches", flush=True)
    peer = run_peer(python, spec, scratch)
    if peer["timed_steps"] != ns.steps:
        raise RuntimeError(f"[{stage}] the peer timed {peer['timed_steps']} steps, expected {ns.steps}")
    timed_tokens = sum(tokens[ns.warmup_steps :])
    # the same batches on both sides: real tokens (MNTP) or training rows per step
    rows = settings["batch_size"] * ns.steps
    unit, units = ("tokens_per_s", timed_tokens) if stage == "mntp" else ("pairs_per_s", rows)
    result = {
        f"lightembed_{unit}": throughput(units, ours["seconds"]),
        f"peer_{unit}": throughput(units, peer["seconds"]),
        "speedup": round(peer["seconds"] / ours["seconds"], 3),
        "lightembed_loss": tail_mean(ours["losses"]),
        "peer_loss": tail_mean(peer["losses"]),
        "lightembed_final_loss": round(ours["losses"][-1], 4),
        "peer_final_loss": round(peer["losses"][-1], 4),
        "lightembed_seconds": round(ours["seconds"], 2),
        "peer_seconds": round(peer["seconds"], 2),
        "steps": ns.steps,
        "warmup_steps": ns.warmup_steps,
        "batch_size": settings["batch_size"],
        "max_length": settings["max_length"],
        "real_tokens_per_step": round(timed_tokens / ns.steps, 1),
        "lr": settings["lr"],
        "lightembed_losses": [round(x, 4) for x in ours["losses"]],
        "peer_losses": [round(x, 4) for x in peer["losses"]],
    }
    print(f"[{stage}] {json.dumps({k: v for k, v in result.items() if not k.endswith('losses')})}", flush=True)
    return {"result": result, "peer": peer}


NOTES = [
    "Order per stage: lightembed first (its batches are recorded), then llm2vec on the same batches in the same order "
    "(sequential sampler instead of the Trainer's shuffle); the stages alternate the two sides within one run.",
    "Both sides start every stage from the base converted SmolLM2 folder (the chain starts each stage from the "
    "previous export), fp32 weights, bf16 autocast where the CPU multiplies bf16 natively, same LoRA targets "
    "(q,k,v,o,gate,up,down), r/alpha/dropout, learning rate, linear warm-up/decay over the same number of steps, "
    "gradient clipping 1.0 and zero weight decay.",
    "Learning rates are lightembed's configs' (shared by both sides so the losses are comparable), not llm2vec's "
    "published ones (MNTP: Trainer default 5e-5; SimCSE 3e-5; supervised 2e-4), which are set for 1000 GPU steps.",
    "llm2vec's recipes turn on gradient checkpointing and load bf16 weights to fit 7-8B models on a GPU; at 135M "
    "parameters neither side needs it, so the peer runs without it (it would only slow the peer down).",
    "The peer's optimizer is the Trainer's default of its version (adamw_torch, foreach); lightembed's configs use "
    "fused AdamW. Only the LoRA weights are optimised, so the optimizer step is a small share of a step.",
    "MNTP losses differ in their masking draws: both mask 20% of tokens with 80/10/10, lightembed never masks the "
    "first token of a row (it has no predecessor to predict it from), transformers' collator may, and the random "
    "generators differ; the same blocks are masked differently. The loss is the mean over masked tokens on both "
    "sides (the peer's is LlamaForCausalLM's shifted causal-LM loss over every position's logits).",
    "Contrastive losses are comparable up to dropout draws, LoRA initialisation and tokenisation side: llm2vec pads "
    "on the left with EOS and embeds each field in its own forward pass (SimCSE: the batch twice); lightembed pads "
    "on the right and embeds both SimCSE views in one stacked pass. The peer's texts are prefixed with llm2vec's "
    "instruction separator so its mean pooling covers the text tokens (run_simcse.py passes texts without it, which "
    "makes LLM2Vec.tokenize return an all-zero embed_mask and pool over padding too).",
    "Loss = mean of the last 5 step losses (final single-step losses are also given); throughput counts the timed "
    "steps only, data loading and collation included on both sides.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-root", default=None, help="folder holding nli/ and corpus/ (else $LIGHTEMBED_DATA, else ../shared/data)"
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps per stage and side")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps before the timing starts")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--venv", type=Path, default=VENV, help="the peer virtual environment (created if missing)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    ns = parser.parse_args()
    if ns.warmup_steps < 1 or ns.steps < 1:
        parser.error("--steps and --warmup-steps must be at least 1")
    from lightembed.data.sources import resolve_data_root
    from lightembed.precision import cpu_has_fast_bf16, resolve_precision

    root = resolve_data_root(ns.data_root) or ROOT.parent / "shared" / "data"
    if not (root / "corpus").is_dir() or not (root / "nli").is_dir():
        sys.exit(f"data root {root} has no corpus/ and nli/: set --data-root or LIGHTEMBED_DATA (../shared/data)")
    os.environ["LIGHTEMBED_DATA"] = str(root)  # the stage configs use paths relative to the data root
    torch.set_num_threads(ns.threads)
    precision = resolve_precision("auto", "cpu")
    python = ensure_peer_venv(ns.venv.resolve())

    stages, peer_env = {}, {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for stage in ns.stages:
            try:
                run = run_stage(stage, ns, python, precision, Path(scratch))
            except (subprocess.CalledProcessError, RuntimeError) as error:  # keep the other stages' numbers
                print(f"[{stage}] failed: {error}", flush=True)
                stages[stage] = {"error": str(error)}
                continue
            stages[stage] = run["result"]
            peer_env = {"versions": run["peer"]["versions"], "threads": run["peer"]["threads"]}
            peer_env["precision"] = run["peer"]["precision"]
    wall = time.perf_counter() - start

    print("\n| stage | lightembed | llm2vec 0.2.3 | speed ratio | lightembed loss | llm2vec loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for stage, r in stages.items():
        if "error" in r:
            print(f"| {stage} | failed: {r['error']} |")
            continue
        unit = "tokens_per_s" if stage == "mntp" else "pairs_per_s"
        label = "tokens/s" if stage == "mntp" else "pairs/s"
        print(
            f"| {stage} ({label}) | {r[f'lightembed_{unit}']:.1f} | {r[f'peer_{unit}']:.1f} | {r['speedup']:.2f}x "
            f"| {r['lightembed_loss']:.4f} | {r['peer_loss']:.4f} |"
        )
    print(f"wall time: {wall / 60:.1f} min")
    import peft

    from lightembed.provenance import git_commit

    result = {
        **stages,
        "env": {
            "lightembed": {
                "commit": git_commit(),
                # the working tree is measured: files changed since that commit (several people edit it at once)
                "modified": modified_files(),
                "torch": torch.__version__,
                "lightning": L.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "precision": f"{precision} (Lightning; resolve_precision('auto'))",
                "threads": torch.get_num_threads(),
            },
            "peer": peer_env,
            "python": platform.python_version(),
            "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_fast_bf16(),
            "wall_minutes": round(wall / 60, 2),
        },
        "notes": NOTES,
    }
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {ns.output}")


if __name__ == "__main__":
    main()
