"""What makes a row of a source bad (an empty text, a missing or non-finite score, a score out of range), checked the
same way on the in-memory path (whole columns at once) and the streamed path (one row at a time)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def bad_row_message(what: str, location: str, count: int | None = None) -> str:
    """The error for a bad row, the same for the in-memory and the streamed path; ``count`` where it is known."""
    total = f" ({count} such row(s) in all)" if count is not None else ""
    return f"{what} at {location}{total}. Fix the data or pass on_bad_row='skip' to drop such rows."


@dataclass(frozen=True)
class RowChecks:
    """What makes a row bad: an empty text in ``text_columns``, a missing or non-finite ``score_column``, a score
    outside ``score_range``. Checked in this order; the first failing check names the row's problem."""

    text_columns: tuple[str, ...] = ()
    score_column: str | None = None
    score_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.score_range is not None and self.score_column is None:
            raise ValueError("score_range needs score_column: the column whose values it bounds")
        if self.score_range is not None and not self.score_range[0] <= self.score_range[1]:
            raise ValueError(f"score_range must be (low, high) with low <= high, got {self.score_range}")

    def text_problem(self, name: str) -> str:
        return f"empty or whitespace-only text in column {name!r}"

    def score_problem(self) -> str:
        return f"missing or non-finite value in score column {self.score_column!r}"

    def range_problem(self) -> str:
        low, high = self.score_range or (math.nan, math.nan)
        return f"value outside score_range [{low}, {high}] in column {self.score_column!r}"

    def problem(self, row: Mapping[str, Any]) -> str | None:
        """The first problem of one row (streamed path), None for a good row; the same rules as :meth:`masks`."""
        for name in self.text_columns:
            text = row.get(name)
            if not isinstance(text, str) or not text.strip():
                return self.text_problem(name)
        if self.score_column is not None:
            value = row.get(self.score_column)
            try:
                score = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                score = math.nan
            if not math.isfinite(score):
                return self.score_problem()
            if self.score_range is not None and not self.score_range[0] <= score <= self.score_range[1]:
                return self.range_problem()
        return None

    def masks(self, table: pa.Table, describe: str) -> list[tuple[str, np.ndarray]]:
        """Per check, its problem and the ``(N,)`` mask of the rows failing it (in-memory path), in check order."""
        checks: list[tuple[str, np.ndarray]] = []
        for name in self.text_columns:
            column = table[name]
            is_text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            if not (is_text or pa.types.is_null(column.type)):
                raise ValueError(f"{describe}: column {name!r} should hold text but has type {column.type}")
            checks.append((self.text_problem(name), _bad_text(column.cast(pa.string()))))
        if self.score_column is not None:
            try:
                values = pc.cast(table[self.score_column], pa.float64()).to_numpy(zero_copy_only=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ValueError(f"{describe}: column {self.score_column!r} should hold numbers: {err}") from err
            values = np.asarray(values, dtype=np.float64)
            checks.append((self.score_problem(), ~np.isfinite(values)))
            if self.score_range is not None:
                low, high = self.score_range
                with np.errstate(invalid="ignore"):
                    outside = np.isfinite(values) & ((values < low) | (values > high))
                checks.append((self.range_problem(), outside))
        return checks


def _bad_text(column: pa.ChunkedArray) -> np.ndarray:
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)
    return np.asarray(pc.fill_null(empty, True).to_numpy(zero_copy_only=False), dtype=bool)
