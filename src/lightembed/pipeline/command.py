"""``lightembed pipeline FILE [--output DIR] [--dry-run]`` (registered in :mod:`lightembed.cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lightembed.pipeline.runner import run_pipeline


def pipeline_main(argv: Sequence[str]) -> dict:
    """``lightembed pipeline FILE [--output DIR] [--dry-run]``."""
    parser = argparse.ArgumentParser(
        prog="lightembed pipeline",
        description="Run the stages of a pipeline file in order, each from the previous one's export; "
        "rerunning skips finished stages and resumes an interrupted one.",
    )
    parser.add_argument("pipeline", help="pipeline YAML file (schema: lightembed.pipeline module docstring)")
    parser.add_argument("--output", default=None, metavar="DIR", help="output folder (default: the file's output_dir)")
    parser.add_argument("--dry-run", action="store_true", help="print each stage's action and command, run nothing")
    ns = parser.parse_args(list(argv))
    return run_pipeline(ns.pipeline, ns.output, dry_run=ns.dry_run)
