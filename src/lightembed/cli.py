"""The ``lightembed`` command: one entry point for every subcommand, quick to start and quiet about user errors.

* ``lightembed fit|validate|test|predict --config ...``: LightningCLI over any stage (``model.class_path``) and data
  module (``data.class_path``), see :mod:`lightembed.fit`.
* ``lightembed pipeline FILE``: an ordered chain of stages with hand-off, resume and a manifest
  (:mod:`lightembed.pipeline`).
* ``lightembed evaluate MODEL [--suite ...] [--sts ...] [--classification ...] [--clustering ...]``: STS,
  SentEval classification, clustering (and MTEB) tables for any model (Hub id, folder, ``packaged:`` name, ``.ckpt``)
  and a JSON report with the provenance of every score (:mod:`lightembed.evaluation.commands`).
* ``lightembed analyze layers|prefix|pca``: LLM2Vec analyses (causal vs bidirectional states, shared-prefix test)
  and PCA pictures of class separation.
* ``lightembed mine-negatives MODEL --input SOURCE --output FILE``: hard negatives for (anchor, positive) pairs,
  written as a triplet jsonl with provenance (:mod:`lightembed.mining.command`).

This module imports nothing heavy at the top: the subcommand's module is imported once it is chosen, so
``lightembed --help`` answers without loading torch. Flag spelling: the Lightning verbs keep LightningCLI's dotted
options, whose names are the Python parameters (``--trainer.max_steps``); the other commands use hyphens
(``--data-root``). Either spelling of a name is accepted by every command.

A user error (bad option, missing file, unknown model, bad data) ends the command with one line on stderr and exit
status 1 (2 for a rejected option); ``LIGHTEMBED_DEBUG=1`` shows the traceback instead (:func:`main`).
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from lightembed.user_errors import describe_user_error, exit_status, is_user_error

if TYPE_CHECKING:
    from lightembed.fit import LightembedCLI, build_cli

__all__ = ["COMMANDS", "LIGHTNING_VERBS", "LightembedCLI", "build_cli", "cli_main", "main"]

DEBUG_VARIABLE = "LIGHTEMBED_DEBUG"
"""Set to 1 to see the traceback behind a user error's one-line message."""


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


def pipeline_main(argv: Sequence[str]) -> Any:
    """``lightembed pipeline FILE``: see :func:`lightembed.pipeline.pipeline_main`."""
    from lightembed.pipeline import pipeline_main as main

    return main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], Any]] = {
    "evaluate": evaluate_main,
    "analyze": analyze_main,
    "pipeline": pipeline_main,
    "mine-negatives": mine_negatives_main,
}
"""lightembed's own subcommands (``argv`` after the command name -> result); the Lightning verbs are apart."""

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")
"""Subcommands LightningCLI runs (:func:`lightembed.fit.build_cli`)."""

SUMMARIES = {
    "fit": "train a stage (--model) on a data module (--data) from YAML configs; then test the best checkpoint",
    "validate": "one pass over the validation sets of a data module with a stage or a checkpoint (--ckpt_path)",
    "test": "one pass over the test sets of a data module with a stage or a checkpoint (--ckpt_path)",
    "predict": "embed the texts of a data module with a stage or a checkpoint and write the embeddings to disk",
    "pipeline": "run a chain of stages from one YAML file (hand-off, resume, manifest); --dry-run prints the commands",
    "evaluate": "STS, classification, clustering and MTEB tables for any model, plus a JSON report",
    "analyze": "LLM2Vec analyses of a decoder (layers, prefix) and PCA pictures of class separation (pca)",
    "mine-negatives": "hard negatives for (anchor, positive) pairs with any model, written as triplet jsonl",
}


def help_text() -> str:
    """The text of ``lightembed --help``: every subcommand with one line."""
    width = max(map(len, SUMMARIES)) + 2
    lines = [
        "usage: lightembed COMMAND [options]",
        "       lightembed COMMAND --help   (the options of one command)",
        "",
        "Train, evaluate and use text-embedding models with Lightning.",
        "",
        "commands:",
        *(f"  {name:<{width}}{summary}" for name, summary in SUMMARIES.items()),
        "",
        "options:",
        f"  {'-h, --help':<{width}}show this message and exit",
        f"  {'--version':<{width}}print lightembed's version and exit",
        "",
        "fit/validate/test/predict take LightningCLI's dotted options named like the Python parameters",
        "(--trainer.max_steps, --model.init_args.encoder.backbone); the other commands use hyphens (--data-root).",
        "Either spelling is accepted. A user error prints one line; LIGHTEMBED_DEBUG=1 prints its traceback too.",
    ]
    return "\n".join(lines)


def normalise_flags(command: str, argv: Sequence[str]) -> list[str]:
    """Rewrite option names to the command's spelling: ``_`` for the Lightning verbs, ``-`` for the others.

    Only the name of a ``--option`` (before any ``=``) changes; values, positional arguments and short options are
    left as they are.
    """
    wrong, right = ("-", "_") if command in LIGHTNING_VERBS else ("_", "-")
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace(wrong, right) + sep + value
        out.append(arg)
    return out


def run_command(argv: Sequence[str], exit_on_error: bool = True) -> Any:
    """Run one ``lightembed`` command line (without the program name); exceptions propagate to the caller.

    ``exit_on_error=False`` makes LightningCLI raise its parser errors instead of printing them and exiting, so
    :func:`main` can reduce them to one line.
    """
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        return None
    if argv[0] == "--version":
        from lightembed import __version__

        print(f"lightembed {__version__}")
        return None
    command = argv[0]
    if command in COMMANDS:
        return COMMANDS[command](normalise_flags(command, argv[1:]))
    if command not in LIGHTNING_VERBS and not command.startswith("-"):  # `-c cfg.yaml fit` goes to LightningCLI
        close = difflib.get_close_matches(command, [*LIGHTNING_VERBS, *COMMANDS], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown command {command!r}{hint}; `lightembed --help` lists the commands")
    from lightembed.fit import build_cli

    return build_cli(normalise_flags("fit", argv), exit_on_error=exit_on_error)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command line and return its exit status; a user error becomes one line on stderr.

    A bug (any other exception) keeps its traceback; ``LIGHTEMBED_DEBUG=1`` shows the traceback of user errors too.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    try:
        run_command(argv, exit_on_error=False)
    except Exception as error:
        if debug or not is_user_error(error):
            raise
        command = argv[0] if argv and argv[0] in SUMMARIES else ""
        print(f"lightembed{' ' + command if command else ''}: error: {describe_user_error(error)}", file=sys.stderr)
        return exit_status(error)
    return 0


def cli_main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``lightembed`` and ``python -m lightembed``.

    Called with ``args`` (from Python, e.g. tests) it runs the command and lets exceptions propagate; without them
    it reads ``sys.argv`` and exits with :func:`main`'s status.
    """
    if args is not None:
        run_command(args)
        return
    sys.exit(main())


def __getattr__(name: str) -> Any:
    # `from lightembed.cli import build_cli` keeps working without importing Lightning for `lightembed --help`
    if name in ("LightembedCLI", "build_cli"):
        from lightembed import fit

        return getattr(fit, name)
    raise AttributeError(f"module 'lightembed.cli' has no attribute {name!r}")
