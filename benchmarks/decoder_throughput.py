"""Throughput and FLOP/s utilisation of the LLM2Vec decoder stages (MNTP, SimCSE, supervised) on SmolLM2-135M.

Each stage is built from its config (configs/stages/*_smollm2.yaml: encoder, LoRA, loss, batch size, sequence length,
learning rate) and trained for a few steps on real batches from its data module: the stage's ``training_step`` under
the precision's autocast, backward, gradient clipping at 1.0 and a fused AdamW step, which is what Lightning runs per
step without its loop bookkeeping. Reported per variant: seconds per step (median of the timed steps, after warm-up),
tokens/s (MNTP, non-padding tokens) or pairs/s (SimCSE: sentences, each embedded twice; supervised: rows of the batch),
FLOPs per step counted by ``torch.utils.flop_counter`` on one of the same steps (``benchmarks/_flops.py``: every matmul
and attention call as executed, forward and backward), achieved FLOP/s and utilisation = achieved / the machine's
2048x2048 matmul peak in the precision used (measured here on the same threads).

Variants side by side, in one run: each stage as shipped (LoRA's input dropout is ``lightembed.lora.FastDropout``,
``encoder.attention_kernel: auto``) and as before both (``nn.Dropout`` and torch's own SDPA kernel choice,
``attention_kernel: flash``: the ``_old`` rows); MNTP with the LM head at every position (``head_positions="all"``)
and at the masked positions only (``"masked"``); supervised with and without ``length_chunking``; and a prototype not
shipped: frozen LoRA base weights kept in bf16 under bf16 autocast (``_bf16_base``). Before the stages, the SDPA
kernels alone (one SmolLM2 attention layer's shapes, forward and backward, bf16) at several sequence lengths: where
the math kernel stops beating flash is ``lightembed.attention_kernels.MATH_MAX_LENGTH``.
``--profile`` prints torch.profiler's top operators for one step of each variant.

    python benchmarks/decoder_throughput.py [--data-root ../shared/data] [--steps 4] [--precision auto] [--profile]

Writes benchmarks/results/decoder_throughput.json: ``{"runs": {variant: {...}}, "utilisation": {"mntp", "simcse",
"supervised"}, "attention_kernels": {"BxL": {"math_ms", "flash_ms"}}, "peak_flops": {"float32", "bfloat16"},
"precision", "env"}``; ``utilisation`` holds each stage's shipped (configured) variant. ``--precision 32-true
--results benchmarks/results/decoder_throughput_fp32.json`` measures the fp32 path (CPUs without native bf16) apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _flops import count_flops, cpu_model, matmul_peak, utilisation  # noqa: E402
from lightembed.attention_kernels import MATH_MAX_LENGTH  # noqa: E402
from lightembed.data import CorpusDataModule, PairDataModule  # noqa: E402
from lightembed.data.sources import resolve_data_root  # noqa: E402
from lightembed.encoder import EncoderSettings  # noqa: E402
from lightembed.lora import FastDropout  # noqa: E402
from lightembed.losses import InBatchNegativesLoss  # noqa: E402
from lightembed.precision import cpu_has_fast_bf16, resolve_precision  # noqa: E402
from lightembed.stages import ContrastiveModule, MNTPModule, SimCSEModule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "configs" / "stages"
RESULTS = Path(__file__).parent / "results" / "decoder_throughput.json"
CLIP = 1.0  # configs/trainer/cpu.yaml's gradient_clip_val


def stage_config(name: str) -> dict[str, Any]:
    return yaml.safe_load((STAGES / f"{name}_smollm2.yaml").read_text())


def build_stage(name: str, overrides: dict[str, Any]) -> tuple[L.LightningModule, L.LightningDataModule, float]:
    """The stage, its data module and learning rate as ``configs/stages/<name>_smollm2.yaml`` sets them."""
    config = stage_config(name)
    model_args = {**config["model"]["init_args"], **{k: v for k, v in overrides.items() if k != "encoder"}}
    data_args = dict(config["data"]["init_args"])
    encoder = EncoderSettings(**{**model_args.pop("encoder"), **overrides.get("encoder", {})})
    model_args.pop("encoder", None)
    lr = model_args.pop("optimizer")["init_args"]["lr"]
    model_args.pop("warmup_ratio", None)
    if "loss" in model_args:
        model_args["loss"] = InBatchNegativesLoss(**model_args["loss"]["init_args"])
    shared = {"tokenizer": encoder.backbone, "max_length": encoder.max_length, "batch_size": data_args["batch_size"]}
    if name == "supervised":
        module: L.LightningModule = ContrastiveModule(encoder, **model_args)
        data_keys = ("train", "train_format", "length_grouping")
        data: L.LightningDataModule = PairDataModule(**{k: data_args[k] for k in data_keys if k in data_args}, **shared)
    else:
        module = (MNTPModule if name == "mntp" else SimCSEModule)(encoder, **model_args)
        data_keys = ("train", "format", "text_column", "objective", "mask_probability", "mask_strategy")
        data = CorpusDataModule(**{k: data_args[k] for k in data_keys if k in data_args}, **shared)
    return module, data, lr


def batches(data: L.LightningDataModule, count: int) -> list[Any]:
    data.setup("fit")
    loader: Iterator[Any] = iter(data.train_dataloader())
    return [next(loader) for _ in range(count)]


def batch_units(name: str, batch: Any) -> int:
    """Tokens (MNTP, without padding) or pairs (SimCSE: sentences; supervised: rows) in a batch."""
    if name == "mntp":
        return int(batch["attention_mask"].sum())
    field = batch["text"] if name == "simcse" else batch["anchor"]
    return int(field["input_ids"].shape[0])


def autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision.startswith("bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def plain_dropout(module: L.LightningModule) -> None:
    """The old LoRA input dropout: ``nn.Dropout`` (``bernoulli_``) instead of :class:`FastDropout`."""
    for layer in module.backbone.modules():
        dropouts = getattr(layer, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, dropout in dropouts.items():
                if isinstance(dropout, FastDropout):
                    dropouts[name] = torch.nn.Dropout(dropout.p).train(dropout.training)


def bf16_base(module: L.LightningModule) -> None:
    """Prototype: frozen LoRA base weights in bf16 (autocast casts them to bf16 for every matmul anyway)."""
    for layer in module.backbone.modules():
        base = getattr(layer, "base_layer", None)
        if isinstance(base, torch.nn.Linear) and not base.weight.requires_grad:
            base.to(torch.bfloat16)


def attention_crossover(threads: int, reps: int = 5) -> dict[str, dict[str, float]]:
    """Median ms of one SDPA forward + backward (SmolLM2-135M: 9 heads of 64, bf16, a padded row) per kernel."""
    import torch.nn.functional as F

    result = {}
    for batch, length in [(32, 32), (16, 64), (8, 128), (6, 160), (5, 192), (4, 256), (2, 512)]:
        row = {}
        for kernel, backend in (("math", SDPBackend.MATH), ("flash", SDPBackend.FLASH_ATTENTION)):
            q, k, v = (torch.randn(batch, 9, length, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
            mask = torch.ones(batch, 1, length, length, dtype=torch.bool)  # (B, 1, L, L)
            mask[0, ..., length // 2 :] = False
            times = []
            for _ in range(reps + 1):
                start = time.perf_counter()
                with sdpa_kernel([backend]):
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                out.sum().backward()
                times.append(time.perf_counter() - start)
            row[f"{kernel}_ms"] = round(statistics.median(times[1:]) * 1e3, 2)
        result[f"{batch}x{length}"] = row
        print(f"SDPA {batch}x{length}: {row}", flush=True)
    return result


def step_fn(module: L.LightningModule, optimizer: torch.optim.Optimizer, precision: str) -> Callable[[Any, int], None]:
    """One training step as Lightning runs it: training_step under autocast, backward, clip, optimizer step."""
    parameters = [p for p in module.parameters() if p.requires_grad]

    def step(batch: Any, index: int) -> None:
        with autocast(precision):
            loss = module.training_step(batch, index)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(
    name: str,
    overrides: dict[str, Any],
    mode: str,
    steps: int,
    warmup: int,
    precision: str,
    peak: float,
    profile: bool,
) -> dict[str, Any]:
    torch.manual_seed(0)
    module, data, lr = build_stage(name, overrides)
    module.configure_model()
    module.train()
    if mode == "old":
        plain_dropout(module)
    if mode == "bf16_base" and precision.startswith("bf16"):
        bf16_base(module)
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0, fused=True)
    step = step_fn(module, optimizer, precision)
    train = batches(data, warmup + steps)
    for index, batch in enumerate(train[:warmup]):
        step(batch, index)
    seconds, flops = [], []
    for index, batch in enumerate(train[warmup:], start=warmup):
        start = time.perf_counter()
        step(batch, index)
        seconds.append(time.perf_counter() - start)
    for index, batch in enumerate(train[warmup:], start=warmup):  # counted apart: the counter slows the step down
        flops.append(count_flops(lambda b=batch, i=index: step(b, i)))
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(train[warmup], warmup)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=48))
    units = sum(batch_units(name, b) for b in train[warmup:])
    total_seconds, total_flops = sum(seconds), sum(flops)
    return {
        "seconds_per_step": round(statistics.median(seconds), 3),
        "units_per_s": round(units / total_seconds, 1),
        "unit": "tokens" if name == "mntp" else "pairs",
        "gflops_per_step": round(total_flops / len(flops) / 1e9, 1),
        "achieved_gflops": round(total_flops / total_seconds / 1e9, 1),
        "utilisation": round(utilisation(total_flops, total_seconds, peak), 4),
        "steps": steps,
        "overrides": overrides,
        "mode": mode,
    }


# (variant, stage, constructor overrides, mode); the first variant of each stage is its shipped (configured) one.
# mode "shipped": as the stage runs; "old": nn.Dropout for LoRA and ``attention_kernel: flash`` (torch's choice), the
# stage before FastDropout and the kernel option; "bf16_base": shipped plus the bf16 frozen base prototype.
OLD = {"encoder": {"attention_kernel": "flash"}}
VARIANTS: list[tuple[str, str, dict[str, Any], str]] = [
    ("mntp_masked_head", "mntp", {"head_positions": "masked"}, "shipped"),
    ("mntp_masked_head_old", "mntp", {"head_positions": "masked", **OLD}, "old"),
    ("mntp_full_head", "mntp", {"head_positions": "all"}, "shipped"),
    ("mntp_masked_head_bf16_base", "mntp", {"head_positions": "masked"}, "bf16_base"),
    ("simcse", "simcse", {}, "shipped"),
    ("simcse_old", "simcse", OLD, "old"),
    ("simcse_bf16_base", "simcse", {}, "bf16_base"),
    ("supervised", "supervised", {}, "shipped"),
    ("supervised_old", "supervised", OLD, "old"),
    ("supervised_no_length_chunking", "supervised", {"length_chunking": None}, "shipped"),
    ("supervised_bf16_base", "supervised", {}, "bf16_base"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-root", default=None, help="folder holding nli/ and corpus/ (else $LIGHTEMBED_DATA, else ../shared/data)"
    )
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", help="Lightning precision; auto: lightembed's pick")
    parser.add_argument("--only", nargs="*", default=None, help="variants to run (default: all)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators per variant")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the JSON (default: the results file)")
    ns = parser.parse_args()
    root = resolve_data_root(ns.data_root) or ROOT.parent / "shared" / "data"
    if not root.is_dir():
        sys.exit("set --data-root or LIGHTEMBED_DATA to the folder holding nli/ and corpus/ (../shared/data)")
    os.environ["LIGHTEMBED_DATA"] = str(root)
    torch.set_num_threads(ns.threads)
    precision = str(resolve_precision(ns.precision, "cpu"))
    peaks = {str(d).removeprefix("torch."): matmul_peak(d, threads=ns.threads) for d in (torch.float32, torch.bfloat16)}
    peak = peaks["bfloat16" if precision.startswith("bf16") else "float32"]
    print(
        f"precision {precision}; 2048x2048 matmul peak: "
        + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
    )

    runs: dict[str, dict[str, Any]] = {}
    kernels = attention_crossover(ns.threads) if not ns.only else {}
    for variant, stage, overrides, mode in VARIANTS:
        if ns.only and variant not in ns.only:
            continue
        start = time.perf_counter()
        options = (ns.steps, ns.warmup, precision, peak, ns.profile)
        runs[variant] = {"stage": stage, **measure(stage, overrides, mode, *options)}
        print(f"{variant}: {runs[variant]} ({time.perf_counter() - start:.0f} s)", flush=True)

    print("\n| variant | s/step | throughput | GFLOP/step | achieved GFLOP/s | utilisation |")
    print("|---|---:|---:|---:|---:|---:|")
    for variant, r in runs.items():
        print(
            f"| {variant} | {r['seconds_per_step']:.2f} | {r['units_per_s']:.0f} {r['unit']}/s "
            f"| {r['gflops_per_step']:.0f} | {r['achieved_gflops']:.0f} | {r['utilisation']:.1%} |"
        )
    configured = {}
    for variant, stage, _, _ in VARIANTS:
        if variant in runs and stage not in configured:
            configured[stage] = runs[variant]["utilisation"]
    result = {
        "runs": runs,
        "utilisation": configured,
        "speedup_over_old": {
            stage: round(runs[stage]["units_per_s"] / runs[f"{stage}_old"]["units_per_s"], 3)
            for stage in ("simcse", "supervised")
            if stage in runs and f"{stage}_old" in runs
        }
        | (
            {"mntp": round(runs["mntp_masked_head"]["units_per_s"] / runs["mntp_masked_head_old"]["units_per_s"], 3)}
            if "mntp_masked_head" in runs and "mntp_masked_head_old" in runs
            else {}
        ),
        "attention_kernels": {"math_max_length": MATH_MAX_LENGTH, "fwd_bwd": kernels},
        "peak_flops": {k: round(v) for k, v in peaks.items()},
        "precision": precision,
        "env": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "threads": ns.threads,
            "cpu": cpu_model(),
            "native_bf16": cpu_has_fast_bf16(),
            "precision": precision,
        },
    }
    results = Path(ns.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
