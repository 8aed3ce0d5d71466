"""The ``lightembed`` command.

* ``lightembed fit|validate|test --config ...``: LightningCLI over any stage (``model.class_path``) and data module
  (``data.class_path``); the tokenizer and max length of the data module are linked to the model's, never repeated.
  After ``fit``, the best checkpoint is tested on the data module's test sets when it has any.
* ``lightembed evaluate MODEL [--suite ...] [--sts ...] [--classification ...] [--clustering ...]``: STS,
  SentEval classification, clustering (and MTEB) tables for any model (Hub id, folder, ``packaged:`` name, ``.ckpt``)
  and a JSON report with the provenance of every score (:mod:`lightembed.evaluation.commands`).
* ``lightembed analyze layers|prefix|pca``: LLM2Vec analyses (causal vs bidirectional states, shared-prefix test)
  and PCA pictures of class separation.
* ``lightembed mine-negatives MODEL --input SOURCE --output FILE``: hard negatives for (anchor, positive) pairs,
  written as a triplet jsonl with provenance (:mod:`lightembed.mining`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightembed.strategies  # noqa: F401  (registers the `fsdp2` and `fsdp_blocks` strategy names)
from lightembed.pipeline import pipeline_main
from lightembed.stages.base import EmbeddingModule


class LightembedCLI(LightningCLI):
    """LightningCLI with lightembed's argument links and a test pass on the best checkpoint after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.model", "data.init_args.tokenizer")
        parser.link_arguments("model.init_args.max_length", "data.init_args.max_length")

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        try:
            return super().instantiate_trainer(**kwargs)
        except ValueError as error:  # Lightning's `fsdp` (FSDP1) refuses CPUs: point at the strategy that runs there
            if "fsdp" not in str(error) or "GPU" not in str(error):
                raise
            raise ValueError(
                f"{error} On CPUs use FSDP2 instead: `--trainer.strategy fsdp2` (or configs/trainer/fsdp2.yaml), "
                "or DDP: `--trainer.strategy ddp`."
            ) from error

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
    """``lightembed evaluate``: STS, classification, clustering and MTEB tables for one model, plus a JSON report.

    See :mod:`lightembed.evaluation.commands` for the options and :mod:`lightembed.evaluation.report` for the report.
    """
    from lightembed.evaluation.commands import evaluate_main as main

    return main(argv)


def analyze_main(argv: Sequence[str]) -> dict:
    """``lightembed analyze layers|prefix|pca``: LLM2Vec analyses of a decoder and PCA pictures of embeddings."""
    from lightembed.evaluation.commands import analyze_main as main

    return main(argv)


def mine_negatives_main(argv: Sequence[str]) -> dict:
    """``lightembed mine-negatives``: see :func:`lightembed.mining.mine_negatives_main`."""
    from lightembed.mining import mine_negatives_main as main

    return main(argv)


COMMANDS = {
    "evaluate": evaluate_main,
    "analyze": analyze_main,
    "pipeline": pipeline_main,
    "mine-negatives": mine_negatives_main,
}


def cli_main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``lightembed`` and ``python -m lightembed``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv[0]](argv[1:])
        return
    build_cli(argv)
