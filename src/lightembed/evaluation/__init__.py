"""Evaluators shared by stages, the CLI and notebooks."""

from lightembed.evaluation.sts import STSResult, evaluate_sts, format_table

__all__ = ["STSResult", "evaluate_sts", "format_table"]
