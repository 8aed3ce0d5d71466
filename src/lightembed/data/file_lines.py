"""Local text files (``.jsonl``/``.json``, ``.csv``, ``.txt``) checked before they are read, and rows found by line.

The readers behind :mod:`lightembed.data.sources` (pyarrow's JSON reader, pandas' CSV reader) neither check that the
bytes are UTF-8 (a bad byte surfaces as a bare ``UnicodeDecodeError`` when the row is first turned into a Python
string, possibly deep into training) nor report positions as lines of the file (pyarrow counts rows inside a block).
So each local text file is scanned once when it is loaded (:func:`scan_text_file`: invalid UTF-8 lines, no data at
all), and the error path of a bad row turns the row index into the line of the file (:func:`locate_row`).
"""

from __future__ import annotations

import codecs
import csv
import json
from dataclasses import dataclass
from pathlib import Path

TEXT_BUILDERS = ("json", "csv", "text")
"""``datasets`` builders that read text files line by line: the ones scanned here."""

_CHUNK = 1 << 24
_WHAT_A_ROW_IS = {
    "json": "one JSON object per line",
    "csv": "a header line, then one row per line",
    "text": "one text per line",
}


@dataclass(frozen=True)
class TextFileScan:
    """What one scan of a text file found.

    Attributes:
        path: the file.
        bad_lines: 1-based numbers of the lines holding bytes that are not UTF-8.
        has_rows: whether it holds a data row: a non-blank line (after the header line for CSV).
    """

    path: Path
    bad_lines: tuple[int, ...]
    has_rows: bool


def _invalid_utf8_lines(path: Path) -> tuple[int, ...]:
    """The 1-based lines of ``path`` that do not decode as UTF-8 (a line-by-line pass: error path only)."""
    bad = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(number)
    return tuple(bad)


def scan_text_file(path: Path, builder: str) -> TextFileScan:
    """One pass over ``path`` in large chunks: is it UTF-8, and does it hold a data row."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    needed = 2 if builder == "csv" else 1  # CSV: the header line is not a row
    content, valid = 0, True
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            lines = iter(chunk.split(b"\n"))
            while content < needed and (line := next(lines, None)) is not None:  # only until a data row is met
                content += bool(line.strip())
            if valid:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    valid = False
            if not valid and content >= needed:
                break
    if valid:
        try:
            decoder.decode(b"", final=True)  # a multi-byte character cut off at the end of the file
        except UnicodeDecodeError:
            valid = False
    bad = () if valid else _invalid_utf8_lines(path)
    if not valid and not bad:  # the cut-off character is on the last line
        bad = (sum(1 for _ in path.open("rb")),)
    return TextFileScan(path, bad, content >= needed)


def empty_file_message(path: Path, builder: str) -> str:
    """The one sentence for a text file without a data row."""
    return (
        f"{path} holds no data rows (it is empty or has only blank lines"
        f"{' or a header' if builder == 'csv' else ''}): write {_WHAT_A_ROW_IS[builder]} into it, "
        "or point the source at another file"
    )


def invalid_utf8_message(scan: TextFileScan) -> str:
    """The error for a text file with lines that are not UTF-8."""
    lines = ", ".join(map(str, scan.bad_lines[:5])) + (", ..." if len(scan.bad_lines) > 5 else "")
    return (
        f"bytes that are not UTF-8 at line {scan.bad_lines[0]} of {scan.path} ({len(scan.bad_lines)} such line(s) "
        f"in all: {lines}). Re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or pass on_bad_row='skip' "
        "to drop such lines."
    )


def drop_lines(scan: TextFileScan, folder: Path) -> Path:
    """A copy of the scanned file in ``folder`` without its invalid UTF-8 lines (``on_bad_row='skip'``)."""
    bad = set(scan.bad_lines)
    target = folder / scan.path.name
    with scan.path.open("rb") as source, target.open("wb") as out:
        for number, line in enumerate(source, start=1):
            if number not in bad:
                out.write(line)
    return target


def _json_is_lines(path: Path) -> bool:
    """Whether a JSON file holds one object per line (not one array or one pretty-printed object)."""
    if path.suffix.lower() == ".jsonl":
        return True
    with path.open("rb") as handle:
        first = next((line for line in handle if line.strip()), b"")
    try:
        return isinstance(json.loads(first), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def locate_row(path: Path, builder: str, row: int) -> str:
    """Where 0-based row ``row`` read from ``path`` is, for messages: ``line L of FILE`` where the file has lines.

    JSON lines: blank lines are not rows; CSV: the header line and blank lines are not rows, and a quoted field may
    span lines (the record's first line is named, with its data row); text: every line is a row.
    """
    if builder == "text":
        return f"line {row + 1} of {path}"
    if builder == "json" and _json_is_lines(path):
        with path.open("rb") as handle:
            index = -1
            for number, line in enumerate(handle, start=1):
                index += bool(line.strip())
                if index == row:
                    return f"line {number} of {path}"
    if builder == "csv":
        with path.open(encoding="utf-8", errors="replace", newline="") as handle:
            reader = csv.reader(handle)
            index = -2  # the first record is the header
            for record in reader:
                index += bool(record)
                if index == row and record:
                    first = reader.line_num - sum(field.count("\n") for field in record)
                    return f"line {first} of {path} (data row {row + 1})"
    return f"row {row + 1} (1-based) of {path}"


def first_bad_json_line(path: Path) -> str | None:
    """``line L of FILE: reason`` for the first non-blank line of a JSON-lines file that is not one JSON object."""
    if not _json_is_lines(path):
        return None
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {number} of {path} is not valid JSON ({err.msg} at column {err.colno})"
            except UnicodeDecodeError:
                return f"line {number} of {path} is not UTF-8"
            if not isinstance(value, dict):
                return f"line {number} of {path} is not a JSON object (got {type(value).__name__})"
    return None
