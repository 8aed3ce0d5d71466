"""The ``lightembed`` command.

* ``lightembed fit|validate|test --config ...``: LightningCLI over any stage (``model.class_path``) and data module
  (``data.class_path``); the tokenizer and max length of the data module are linked to the model's, never repeated.
  After ``fit``, the best checkpoint is tested on the data module's test sets when it has any.
* ``lightembed evaluate MODEL --sts FILE [FILE ...]``: STS Spearman table for any model (Hub id, folder,
  ``packaged:`` name, ``.ckpt``), optionally written as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightembed.pipeline import pipeline_main
from lightembed.stages.base import EmbeddingModule


class LightembedCLI(LightningCLI):
    """LightningCLI with lightembed's argument links and a test pass on the best checkpoint after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.model", "data.init_args.tokenizer")
        parser.link_arguments("model.init_args.max_length", "data.init_args.max_length")

    def after_fit(self) -> None:
        if getattr(self.datamodule, "test_sources", None) and not self.trainer.fast_dev_run:
            ckpt = "best" if getattr(self.trainer.checkpoint_callback, "best_model_path", "") else None
            fit_metrics = dict(self.trainer.callback_metrics)
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
            # keep the fit's train/val metrics beside the test ones (the test pass resets callback_metrics)
            for name, value in fit_metrics.items():
                self.trainer.callback_metrics.setdefault(name, value)


def build_cli(args: Sequence[str] | None = None, run: bool = True) -> LightembedCLI:
    """Build (and by default run) the LightningCLI; ``run=False`` only parses and instantiates (used by tests)."""
    return LightembedCLI(
        EmbeddingModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=list(args) if args is not None else None,
        run=run,
    )


def evaluate_main(argv: Sequence[str]) -> dict:
    """``lightembed evaluate``: print an STS table for one model and optionally write it as JSON."""
    from lightembed.api import load_encoder
    from lightembed.evaluation.sts import evaluate_sts, format_table, parse_named_sources

    parser = argparse.ArgumentParser(prog="lightembed evaluate", description="STS evaluation of any encoder.")
    parser.add_argument("model", help="Hub id, local folder, packaged:<name>, or a Lightning .ckpt")
    parser.add_argument(
        "--sts",
        nargs="+",
        required=True,
        metavar="[NAME=]SOURCE",
        help="STS sets: local files (relative to --data-root) or Hub ids with sentence1/sentence2/score",
    )
    parser.add_argument("--split", default="test", help="split used for Hub sources (default: test)")
    parser.add_argument("--data-root", default=None, help="folder for relative local paths (else $LIGHTEMBED_DATA)")
    parser.add_argument("--pooling", default=None, help="override the model's pooling")
    parser.add_argument("--max-length", type=int, default=None, help="override the model's token limit")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--instruction", default=None, help="prefix for every sentence, excluded from pooling")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON here")
    ns = parser.parse_args(list(argv))

    encoder = load_encoder(ns.model, pooling=ns.pooling, max_length=ns.max_length)
    sources = parse_named_sources(ns.sts, ns.split)
    results = evaluate_sts(
        encoder,
        sources,
        split=ns.split,
        data_root=ns.data_root,
        batch_size=ns.batch_size,
        precision=ns.precision,
        instruction=ns.instruction,
    )
    print(f"model: {ns.model}  pooling: {encoder.pooling}  precision: {ns.precision}")
    print(format_table(results))
    report = {
        "model": ns.model,
        "pooling": encoder.pooling,
        "precision": ns.precision,
        "instruction": ns.instruction,
        "sts": {r.name: r.to_dict() for r in results},
    }
    if ns.json:
        Path(ns.json).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


COMMANDS = {"evaluate": evaluate_main, "pipeline": pipeline_main}


def cli_main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``lightembed`` and ``python -m lightembed``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv[0]](argv[1:])
        return
    build_cli(argv)
