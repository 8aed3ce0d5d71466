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
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np

from lightembed.data.file_lines import (
    TEXT_BUILDERS,
    drop_lines,
    empty_file_message,
    first_bad_json_line,
    invalid_utf8_message,
    locate_row,
    scan_text_file,
)
from lightembed.data.row_checks import RowChecks, bad_row_message
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


def _checked_files(resolved: ResolvedSource, on_bad_row: str, folder: Path | None) -> list[Path]:
    """The source's files after the text-file checks (:mod:`lightembed.data.file_lines`): a file without rows is an
    error; invalid UTF-8 lines are an error, or (``on_bad_row='skip'`` and a ``folder`` for copies) dropped."""
    if resolved.builder not in TEXT_BUILDERS:
        return list(resolved.files)
    files = []
    for path in resolved.files:
        scan = scan_text_file(path, str(resolved.builder))
        if not scan.has_rows:
            raise ValueError(empty_file_message(path, str(resolved.builder)))
        if scan.bad_lines and (on_bad_row == "error" or folder is None):
            raise ValueError(invalid_utf8_message(scan))
        if scan.bad_lines and folder is not None:
            log.warning("%s: skipped %d line(s) that are not UTF-8: %s", path, len(scan.bad_lines), scan.bad_lines[:5])
            path = drop_lines(scan, Path(tempfile.mkdtemp(dir=folder)))
        files.append(path)
    return files


def _read_local(resolved: ResolvedSource, on_bad_row: str = "error") -> datasets.Dataset:
    def read(files: Sequence[Path]) -> datasets.Dataset:
        return datasets.load_dataset(resolved.builder, data_files=[str(f) for f in files], split="train")

    with tempfile.TemporaryDirectory(prefix="lightembed-utf8-") as folder:
        files = _checked_files(resolved, on_bad_row, Path(folder))
        try:
            return read(files)
        except datasets.exceptions.DatasetGenerationError as err:
            culprit = resolved.describe()
            if len(files) > 1:  # find the file that fails on its own
                for path, original in zip(files, resolved.files, strict=True):
                    try:
                        read([path])
                    except datasets.exceptions.DatasetGenerationError:
                        culprit = str(original)
                        break
            line = None
            if resolved.builder == "json" and Path(culprit).is_file():
                line = first_bad_json_line(Path(culprit))  # pyarrow counts rows inside a block, not file lines
            raise ValueError(f"could not read {culprit} as {resolved.builder}: {line or err.__cause__ or err}") from err


def _read_hub(resolved: ResolvedSource, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    try:
        return datasets.load_dataset(resolved.hub_id, resolved.hub_config, split=split, streaming=streaming)
    except Exception as err:
        err.add_note(
            f"lightembed: {resolved.source!r} was read as a Hub dataset id because no local file matched it; "
            f"for local data set the data_root option or ${DATA_ROOT_ENV}"
        )
        raise


def row_locator(source: str, split: str = "train", data_root: str | None = None) -> Callable[[int], str]:
    """``row -> where``: where row ``row`` (0-based) of :func:`load_source`'s result is, for messages raised after
    loading (a bad NLI label); error path only."""
    resolved = resolve_source(source, split, data_root)
    return lambda row: _row_location(resolved, row, split)


def _row_location(resolved: ResolvedSource, row: int, split: str) -> str:
    """Where row ``row`` (0-based) of the dataset read from all of the source's files is: ``line L of FILE`` for a
    text file (:func:`~lightembed.data.file_lines.locate_row`), ``row R (1-based) of FILE`` for parquet."""
    if not resolved.is_local:
        return f"row {row} (0-based) of {resolved.describe()} split {split!r}"
    builder = str(resolved.builder)
    if len(resolved.files) > 1:  # error path only: count rows per file to name the right one
        for path in resolved.files:
            size = len(datasets.load_dataset(builder, data_files=[str(path)], split="train"))
            if row < size:
                return locate_row(path, builder, row)
            row -= size
    return locate_row(resolved.files[0], builder, row)


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
    ds = _read_local(resolved, on_bad_row) if resolved.is_local else _read_hub(resolved, split, streaming=False)
    if len(ds) == 0:
        raise ValueError(f"{resolved.describe()} holds no rows: fill it with data or point the source elsewhere")
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
    if bad.all():
        raise ValueError(
            f"{resolved.describe()}: every one of its {len(ds)} rows is bad ({counts}), so on_bad_row='skip' leaves "
            "nothing to read; fix the data"
        )
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
                where = locate_row(Path(name), str(resolved.builder), index) if resolved.is_local else None
                return problem, where or f"row {index} (0-based) of {name}"
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
    if resolved.is_local:  # streamed rows are not copied: a file with invalid UTF-8 is an error even with 'skip'
        _checked_files(resolved, on_bad_row, None)
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
