"""Where training and evaluation data come from: local files or a Hugging Face Hub dataset, with checked columns.

A *source* is one string, written the same way in YAML and in Python:

- local files: a ``.jsonl``/``.json``/``.csv``/``.parquet``/``.txt`` file, a glob (``shards/*.parquet``) or a
  directory, absolute or relative to the data root (option ``data_root``, else the ``LIGHTEMBED_DATA`` environment
  variable) or to the working directory. A directory holding one file per split (``train.jsonl``,
  ``validation.jsonl``, ``train-00000-of-00002.parquet`` ...) gives the files of the requested split; a directory
  whose files are not named after splits gives all of them.
- a Hub dataset id ``owner/name`` or ``name``, optionally with a config: ``nyu-mll/glue:mrpc``.

Local copies use the column names of their Hub versions, so one config can point at either. :func:`load_source`
checks that the requested columns exist, that text cells are not empty and that scores are finite (and in range),
and returns a :class:`datasets.Dataset` holding only the requested columns.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lightembed.provenance import file_sha256

log = logging.getLogger(__name__)

DATA_ROOT_ENV = "LIGHTEMBED_DATA"
"""Environment variable naming the folder that relative local sources are looked up in."""

BUILDERS: dict[str, str] = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
"""File extension -> packaged ``datasets`` builder used to read it."""

SPLIT_NAMES = ("train", "validation", "test", "dev", "val")
"""File stems recognised as split names inside a source directory."""

OnBadRow = Literal["error", "skip"]

_GLOB_CHARS = ("*", "?", "[")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


@dataclass(frozen=True)
class ResolvedSource:
    """A source string resolved either to local files (``files``, ``builder``) or to a Hub id (``hub_id``)."""

    source: str
    files: tuple[Path, ...] = ()
    builder: str | None = None
    hub_id: str | None = None
    hub_config: str | None = None

    @property
    def is_local(self) -> bool:
        return bool(self.files)

    def describe(self) -> str:
        """Short human-readable name for error messages."""
        if self.is_local:
            return str(self.files[0]) if len(self.files) == 1 else f"{self.source!r} ({len(self.files)} files)"
        config = f" (config {self.hub_config!r})" if self.hub_config else ""
        return f"Hub dataset {self.hub_id!r}{config}"


def resolve_data_root(data_root: str | None) -> Path | None:
    """The data root: the option value, else the ``LIGHTEMBED_DATA`` environment variable, else None."""
    value = data_root or os.environ.get(DATA_ROOT_ENV)
    return Path(value).expanduser() if value else None


def _looks_like_path(source: str) -> bool:
    return (
        Path(source).suffix.lower() in BUILDERS
        or source.startswith(("/", "./", "../", "~"))
        or any(char in source for char in _GLOB_CHARS)
    )


def _candidates(source: str, data_root: Path | None) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_absolute():
        return [path]
    roots = ([data_root] if data_root is not None else []) + [Path.cwd()]
    return [root / path for root in roots]


def _split_files(folder: Path, split: str) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in BUILDERS)

    def split_of(path: Path) -> str | None:
        stem = path.name.split(".")[0]
        return next((name for name in SPLIT_NAMES if stem == name or stem.startswith((f"{name}-", f"{name}_"))), None)

    chosen = [p for p in files if split_of(p) == split]
    if chosen:
        return chosen
    named = sorted({s for p in files if (s := split_of(p)) is not None})
    if named:
        raise FileNotFoundError(f"directory {folder} has files for splits {named} but none for split {split!r}")
    return files


def _local_files(candidate: Path, split: str) -> list[Path]:
    text = str(candidate)
    if any(char in text for char in _GLOB_CHARS):
        matches = (Path(p) for p in glob.glob(text, recursive=True))
        return sorted(p for p in matches if p.is_file() and p.suffix.lower() in BUILDERS)
    if candidate.is_dir():
        return _split_files(candidate, split)
    if candidate.is_file():
        return [candidate]
    return []


def resolve_source(source: str, split: str = "train", data_root: str | None = None) -> ResolvedSource:
    """Resolve ``source`` to local files or a Hub id (see the module docstring for the rules).

    Raises:
        FileNotFoundError: the source is written as a path (extension, ``/``, ``./``, ``~`` or a glob) or is not a
            valid Hub id, and no local candidate exists; the message lists every path tried.
        ValueError: the files found mix formats that need different readers.
    """
    root = resolve_data_root(data_root)
    tried = _candidates(source, root)
    for candidate in tried:
        files = _local_files(candidate, split)
        if not files:
            continue
        builders = {BUILDERS[f.suffix.lower()] for f in files}
        if len(builders) > 1:
            raise ValueError(f"source {source!r} mixes file formats {sorted(builders)}: {[str(f) for f in files]}")
        return ResolvedSource(source=source, files=tuple(f.resolve() for f in files), builder=builders.pop())
    if _looks_like_path(source) or not _HUB_ID.match(source):
        root_hint = f"data root {root}" if root else f"no data root (set the data_root option or ${DATA_ROOT_ENV})"
        raise FileNotFoundError(
            f"data source {source!r} not found; tried {[str(p) for p in tried]} ({root_hint}). "
            "A source is a .jsonl/.json/.csv/.parquet/.txt file, a glob, a directory, or a Hub id owner/name[:config]."
        )
    hub_id, _, config = source.partition(":")
    return ResolvedSource(source=source, hub_id=hub_id, hub_config=config or None)


def source_fingerprint(source: str, split: str = "train", data_root: str | None = None) -> dict:
    """What a run read, for its manifest: resolved local files with size and sha256, or the Hub id and split."""
    resolved = resolve_source(source, split, data_root)
    if resolved.is_local:
        files = [{"path": str(f), "bytes": f.stat().st_size, "sha256": file_sha256(f)} for f in resolved.files]
        return {"source": source, "kind": "local", "files": files}
    return {"source": source, "kind": "hub", "id": resolved.hub_id, "config": resolved.hub_config, "split": split}


def _read_local(resolved: ResolvedSource) -> datasets.Dataset:
    def read(files: Sequence[Path]) -> datasets.Dataset:
        return datasets.load_dataset(resolved.builder, data_files=[str(f) for f in files], split="train")

    try:
        return read(resolved.files)
    except datasets.exceptions.DatasetGenerationError as err:
        culprit = resolved.describe()
        if len(resolved.files) > 1:  # find the file that fails on its own
            for path in resolved.files:
                try:
                    read([path])
                except datasets.exceptions.DatasetGenerationError:
                    culprit = str(path)
                    break
        cause = err.__cause__ or err
        raise ValueError(f"could not read {culprit} as {resolved.builder}: {cause}") from err


def _read_hub(resolved: ResolvedSource, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    try:
        return datasets.load_dataset(resolved.hub_id, resolved.hub_config, split=split, streaming=streaming)
    except Exception as err:
        err.add_note(
            f"lightembed: {resolved.source!r} was read as a Hub dataset id because no local file matched it; "
            f"for local data set the data_root option or ${DATA_ROOT_ENV}"
        )
        raise


def _row_location(resolved: ResolvedSource, row: int, split: str) -> str:
    """'row R (0-based) of FILE' for row ``row`` of the dataset read from all of the source's files."""
    if not resolved.is_local:
        return f"row {row} (0-based) of {resolved.describe()} split {split!r}"
    if len(resolved.files) > 1:  # error path only: count rows per file to name the right one
        for path in resolved.files:
            size = len(datasets.load_dataset(resolved.builder, data_files=[str(path)], split="train"))
            if row < size:
                return f"row {row} (0-based) of {path}"
            row -= size
    return f"row {row} (0-based) of {resolved.files[0]}"


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


def _check_options(on_bad_row: str, columns: Sequence[str], checks: RowChecks) -> None:
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    for name in [*checks.text_columns, *([checks.score_column] if checks.score_column else [])]:
        if name not in columns:
            raise ValueError(f"column {name!r} is checked but not among the requested columns {list(columns)}")


def _missing_columns(resolved: ResolvedSource, columns: Sequence[str], found: Sequence[str]) -> None:
    missing = [c for c in columns if c not in found]
    if missing:
        raise ValueError(
            f"{resolved.describe()}: missing column(s) {missing}; expected columns {list(columns)}, found {list(found)}"
        )


def load_source(
    source: str,
    columns: Sequence[str],
    split: str = "train",
    data_root: str | None = None,
    *,
    text_columns: Sequence[str] | None = None,
    score_column: str | None = None,
    score_range: tuple[float, float] | None = None,
    on_bad_row: OnBadRow = "error",
) -> datasets.Dataset:
    """Load a source and keep only ``columns`` (in that order), after checking them.

    Args:
        source: local file, glob or directory, or Hub id ``owner/name[:config]`` (see :func:`resolve_source`).
        columns: the source's column names to keep; a missing one is an error.
        split: the split of a Hub dataset or of a directory holding one file per split; ignored for files and globs.
        data_root: folder for relative local sources; default ``$LIGHTEMBED_DATA``.
        text_columns: columns that must hold non-empty text; default every requested column of string type.
        score_column: a column that must hold finite numbers (nulls and NaN are bad rows).
        score_range: inclusive ``(low, high)`` bounds for ``score_column``.
        on_bad_row: ``"error"`` raises a ValueError naming the file and the first bad row; ``"skip"`` drops bad
            rows and logs how many.

    Returns:
        A :class:`datasets.Dataset` with exactly ``columns``.
    """
    checks = RowChecks(tuple(text_columns or ()), score_column, score_range)
    _check_options(on_bad_row, columns, checks)
    columns = list(columns)
    resolved = resolve_source(source, split, data_root)
    ds = _read_local(resolved) if resolved.is_local else _read_hub(resolved, split, streaming=False)
    _missing_columns(resolved, columns, ds.column_names)
    ds = ds.select_columns(columns)
    if text_columns is None:
        names = tuple(c for c in columns if getattr(ds.features[c], "dtype", None) in ("string", "large_string"))
        checks = RowChecks(names, score_column, score_range)

    masks = checks.masks(ds.with_format("arrow"), resolved.describe())
    bad = np.zeros(len(ds), dtype=bool)
    for _, mask in masks:
        bad |= mask
    if not bad.any():
        return ds
    if on_bad_row == "error":
        first = int(np.flatnonzero(bad)[0])  # the first bad row, and its first failing check
        what, mask = next((what, mask) for what, mask in masks if mask[first])
        raise ValueError(bad_row_message(what, _row_location(resolved, first, split), int(mask.sum())))
    counts = "; ".join(f"{int(mask.sum())} with {what}" for what, mask in masks if mask.any())
    log.warning("%s: skipped %d of %d rows (%s)", resolved.describe(), int(bad.sum()), len(ds), counts)
    return ds.select(np.flatnonzero(~bad))


def _stream(resolved: ResolvedSource, split: str, files: Sequence[Path] | None = None) -> datasets.IterableDataset:
    if resolved.is_local:
        data_files = [str(f) for f in (resolved.files if files is None else files)]
        return datasets.load_dataset(resolved.builder, data_files=data_files, split="train", streaming=True)
    return _read_hub(resolved, split, streaming=True)


def _first_bad_row(resolved: ResolvedSource, split: str, checks: RowChecks) -> tuple[str, str]:
    """Error path of a streamed source: its first bad row in file order, as ``(problem, location)``.

    The streamed rows may come shuffled; reading the files again in order names the same row that the in-memory
    path names."""
    parts: list[tuple[str, Iterator[dict]]] = []
    if resolved.is_local:
        parts = [(str(path), iter(_stream(resolved, split, [path]))) for path in resolved.files]
    else:
        parts = [(f"{resolved.describe()} split {split!r}", iter(_stream(resolved, split)))]
    for name, rows in parts:
        for index, row in enumerate(rows):
            problem = checks.problem(row)
            if problem is not None:
                return problem, f"row {index} (0-based) of {name}"
    raise AssertionError("a bad row was met but none is found on a second read")  # pragma: no cover


def stream_source(
    source: str,
    columns: Sequence[str],
    split: str = "train",
    data_root: str | None = None,
    *,
    text_columns: Sequence[str] = (),
    score_column: str | None = None,
    score_range: tuple[float, float] | None = None,
    on_bad_row: OnBadRow = "error",
) -> datasets.IterableDataset:
    """:func:`load_source` read lazily (``datasets`` streaming), for sources larger than memory.

    The same resolution, column check (on the first row) and row checks, with the same messages; bad rows are found
    as the rows are read. An error names the source's first bad row in file order, as :func:`load_source` does;
    there is no count of bad rows (that would need a full pass). Columns other than ``columns`` are kept (the
    caller maps them).
    """
    checks = RowChecks(tuple(text_columns), score_column, score_range)
    _check_options(on_bad_row, columns, checks)
    resolved = resolve_source(source, split, data_root)
    ds = _stream(resolved, split)
    first = next(iter(ds.take(1)), None)
    if first is None:
        raise ValueError(f"{resolved.describe()} is empty")
    _missing_columns(resolved, columns, list(first))

    def good(row: dict[str, Any]) -> bool:
        if checks.problem(row) is None:
            return True
        if on_bad_row == "error":
            raise ValueError(bad_row_message(*_first_bad_row(resolved, split, checks)))
        return False

    return ds.filter(good)
