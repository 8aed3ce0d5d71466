"""The ``lightembed`` command.

* ``lightembed fit|validate|test --config ...``: LightningCLI over any stage (``model.class_path``) and data module
  (``data.class_path``), see :mod:`lightembed.fit`.
* ``lightembed pipeline FILE``: an ordered chain of stages with hand-off, resume and a manifest
  (:mod:`lightembed.pipeline`).
* ``lightembed evaluate MODEL [--suite ...] [--sts ...] [--classification ...] [--clustering ...]``: STS,
  SentEval classification, clustering (and MTEB) tables for any model (Hub id, folder, ``packaged:`` name, ``.ckpt``)
  and a JSON report with the provenance of every score (:mod:`lightembed.evaluation.commands`).
* ``lightembed analyze layers|prefix|pca``: LLM2Vec analyses (causal vs bidirectional states, shared-prefix test)
  and PCA pictures of class separation.
* ``lightembed mine-negatives MODEL --input SOURCE --output FILE``: hard negatives for (anchor, positive) pairs,
  written as a triplet jsonl with provenance (:mod:`lightembed.mining.command`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightembed.fit import LightembedCLI, build_cli
from lightembed.pipeline import pipeline_main

__all__ = ["COMMANDS", "LightembedCLI", "build_cli", "cli_main"]


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
    """``lightembed mine-negatives``: see :func:`lightembed.mining.command.mine_negatives_main`."""
    from lightembed.mining.command import mine_negatives_main as main

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
