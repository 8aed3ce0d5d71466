"""``lightembed pipeline FILE [--output DIR] [--dry-run] [--restart STAGE]`` (registered in :mod:`lightembed.cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lightembed.interrupts import handle_interrupts
from lightembed.pipeline.runner import run_pipeline


def pipeline_main(argv: Sequence[str]) -> dict:
    """``lightembed pipeline FILE [--output DIR] [--dry-run] [--restart STAGE]``.

    SIGTERM/SIGINT stop the running stage at a batch boundary with a checkpoint, mark it ``interrupted`` and exit
    with 143/130 (:mod:`lightembed.interrupts`).
    """
    parser = argparse.ArgumentParser(
        prog="lightembed pipeline",
        description="Run the stages of a pipeline file in order, each from the previous one's export; "
        "rerunning skips finished stages whose inputs are unchanged and resumes an interrupted one.",
    )
    parser.add_argument("pipeline", help="pipeline YAML file (schema: lightembed.pipeline module docstring)")
    parser.add_argument("--output", default=None, metavar="DIR", help="output folder (default: the file's output_dir)")
    parser.add_argument("--dry-run", action="store_true", help="print each stage's action and command, run nothing")
    parser.add_argument(
        "--restart",
        default=None,
        metavar="STAGE",
        help="start STAGE over (its run folder is moved aside, not deleted), and every stage after it; needed to "
        "rerun an interrupted stage whose inputs changed",
    )
    ns = parser.parse_args(list(argv))
    with handle_interrupts("pipeline"):
        return run_pipeline(ns.pipeline, ns.output, dry_run=ns.dry_run, restart=ns.restart)
