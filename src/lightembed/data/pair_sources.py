"""Named training sources of the multi-dataset module (and of hard-negative mining): a source, its row format, filters.

A :class:`PairSource` is read in memory by :func:`load_pairs` or lazily by :func:`stream_pairs`. Both go through the
same source layer (:mod:`lightembed.data.sources`: resolve, read, check rows with the same messages) and the same
formats (:mod:`lightembed.data.formats`), then apply the same filters: ``where`` (column values), ``min_score`` and
``limit``. Rows come out with the text fields ``anchor``, ``positive`` [, ``negative``].
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lightembed.data.formats import (
    TEXT_FIELDS,
    RowFormat,
    checked_columns,
    convert,
    convert_row,
    format_named,
    to_fields,
)
from lightembed.data.nli import bad_label_message
from lightembed.data.sources import OnBadRow, load_source, row_locator, stream_source

log = logging.getLogger(__name__)

SOURCE_FORMATS = ("pairs", "triplets", "nli_triplets", "nli_entailment_pairs")
"""Formats a training source may have: rows of texts only (one batch tokenises the same fields for every row)."""

SourceFormat = Literal["pairs", "triplets", "nli_triplets", "nli_entailment_pairs", "nli_pairs"]
""":data:`SOURCE_FORMATS`, and the deprecated ``nli_pairs`` (read as ``nli_entailment_pairs``, with a warning)."""


@dataclass
class PairSource:
    """One named training source of :class:`~lightembed.data.MultiDatasetDataModule`.

    Args:
        source: local file/glob/directory (relative to the data root) or Hub id ``owner/name[:config]``.
        format: ``pairs``, ``triplets``, ``nli_triplets`` or ``nli_entailment_pairs``
            (:mod:`lightembed.data.formats`); the deprecated ``nli_pairs`` reads as ``nli_entailment_pairs``.
        columns: source column -> field; default per format. ``pairs``/``triplets`` map to ``anchor``,
            ``positive`` and optionally ``negative``; ``nli_*`` to ``premise``, ``hypothesis``, ``label``.
        split: split read from a Hub id or a per-split directory.
        where: keep rows whose column equals the value (or is one of a list of values), e.g. ``{label: 1}``.
        min_score: keep rows whose ``score_column`` is at least this.
        score_column: the source column ``min_score`` reads.
        limit: keep the first ``limit`` rows (after filtering and conversion).
        streaming: read the source lazily (``datasets`` streaming, for corpora larger than memory); see
            :class:`~lightembed.data.streaming.StreamingPairBatches` for what changes.
    """

    source: str
    format: SourceFormat = "pairs"
    columns: dict[str, str] | None = None
    split: str = "train"
    where: dict[str, Any] | None = None
    min_score: float | None = None
    score_column: str = "score"
    limit: int | None = None
    streaming: bool = False

    def __post_init__(self) -> None:
        fmt = format_named(self.format, "format", SOURCE_FORMATS, old_meaning="nli_entailment_pairs")
        self.format = fmt.name  # type: ignore[assignment]
        fmt.mapping(self.columns)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be positive, got {self.limit}")
        if self.streaming and not fmt.streamable:
            raise ValueError(
                f"format {fmt.name!r} groups the hypotheses of each premise over the whole source and cannot "
                "stream; use 'nli_entailment_pairs', or convert the source to triplets first"
            )

    @property
    def row_format(self) -> RowFormat:
        return format_named(self.format, "format", SOURCE_FORMATS)

    @property
    def mapping(self) -> dict[str, str]:
        """Source column -> field, the default of the format unless ``columns`` is set."""
        return self.row_format.mapping(self.columns)

    @property
    def fields(self) -> list[str]:
        """The training fields its rows will have."""
        return self.row_format.fields(self.mapping)

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in asdict(self).items() if v is not None)

    def label(self, name: str | None) -> str:
        """How messages name this source."""
        return f"training source {name!r} ({self.source})" if name else f"training source {self.source!r}"

    def read_columns(self) -> list[str]:
        """Every source column it reads: the mapped ones, then those that ``where`` and ``min_score`` read."""
        extra = [*(self.where or {}), *([self.score_column] if self.min_score is not None else [])]
        mapping = self.mapping
        return [*mapping, *(c for c in dict.fromkeys(extra) if c not in mapping)]


def as_pair_source(spec: PairSource | Mapping[str, Any] | str) -> PairSource:
    """A :class:`PairSource` from itself, a dict of its fields, or a source string (a ``pairs`` file)."""
    if isinstance(spec, PairSource):
        return spec
    if isinstance(spec, str):
        return PairSource(source=spec)
    if isinstance(spec, Mapping):
        return PairSource(**spec)
    raise TypeError(f"a training source is a string, a dict or a PairSource, got {type(spec).__name__}")


def _keep_rows(ds: datasets.Dataset, column: str, wanted: Any) -> np.ndarray:
    """Boolean mask of the rows whose ``column`` equals ``wanted`` (or one of a list of values)."""
    values = list(wanted) if isinstance(wanted, list | tuple | set) else [wanted]
    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):  # Hub label columns: allow names as well as ids
        values = [feature.str2int(v) if isinstance(v, str) else v for v in values]
    table_column = ds.with_format("arrow")[column]
    try:
        value_set = pa.array(values).cast(table_column.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
        raise ValueError(
            f"where {{{column}: {wanted!r}}}: the value does not fit column type {table_column.type}"
        ) from err
    mask = pc.fill_null(pc.is_in(table_column, value_set=value_set), False)
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _read(reader: Callable[..., Any], spec: PairSource, label: str, data_root: str | None, on_bad_row: OnBadRow) -> Any:
    """``reader`` (:func:`load_source` or :func:`stream_source`) on a source's columns with its row checks; a
    column or row error says which source it came from."""
    text_columns, _ = checked_columns(spec.row_format, spec.mapping)
    try:
        return reader(
            spec.source,
            spec.read_columns(),
            spec.split,
            data_root,
            text_columns=text_columns,
            score_column=spec.score_column if spec.min_score is not None else None,
            on_bad_row=on_bad_row,
        )
    except (ValueError, FileNotFoundError) as err:
        err.add_note(f"while loading {label}: {spec.describe()}; map its columns with `columns`")
        raise


def load_pairs(
    spec: PairSource | Mapping[str, Any] | str,
    data_root: str | None = None,
    on_bad_row: OnBadRow = "error",
    name: str | None = None,
) -> datasets.Dataset:
    """Load one training source as rows ``anchor``, ``positive`` [, ``negative``] (string columns, in that order).

    Raises:
        ValueError: mapped columns missing from the source, an empty text, a bad score or NLI label (with
            ``on_bad_row="error"``), a ``where`` value that does not fit its column, or no row left after filtering;
            the message names the source.
    """
    spec = as_pair_source(spec)
    label = spec.label(name)
    fmt, mapping = spec.row_format, spec.mapping
    ds = _read(load_source, spec, label, data_root, on_bad_row)
    read = len(ds)
    steps = []
    keep = np.ones(read, dtype=bool)
    for column, wanted in (spec.where or {}).items():
        try:
            keep &= _keep_rows(ds, column, wanted)
        except ValueError as err:
            raise ValueError(f"{label}: {err}") from err
        steps.append(f"where {column} = {wanted!r}")
    if spec.min_score is not None:
        scores = np.asarray(ds.with_format("arrow")[spec.score_column].to_numpy(), dtype=np.float64)
        keep &= scores >= spec.min_score
        steps.append(f"{spec.score_column} >= {spec.min_score}")
    kept = np.flatnonzero(keep)  # row of the filtered rows -> row of the source
    if not keep.all():
        ds = ds.select(kept)
    source_row = row_locator(spec.source, spec.split, data_root)
    try:
        ds = convert(to_fields(ds, mapping), fmt, on_bad_row, locate=lambda row: source_row(int(kept[row])))
    except ValueError as err:
        raise ValueError(f"{label}: {err}") from err
    if fmt.conversion == "nli_triplets":
        steps.append("NLI triplets (entailment x contradiction per premise)")
    elif fmt.conversion == "nli_entailment_pairs":
        steps.append("NLI entailment pairs")
    ds = ds.select_columns([f for f in TEXT_FIELDS if f in ds.column_names])
    if spec.limit is not None and len(ds) > spec.limit:
        ds = ds.select(range(spec.limit))
    if len(ds) == 0:
        after = f" after {'; '.join(steps)}" if steps else ""
        raise ValueError(f"{label} is empty{after} ({read} rows read); loosen the filters or check the file")
    return ds


def stream_pairs(
    spec: PairSource | Mapping[str, Any] | str,
    data_root: str | None = None,
    on_bad_row: OnBadRow = "error",
    name: str | None = None,
) -> datasets.IterableDataset:
    """A training source read lazily (``datasets`` streaming) as rows ``anchor``, ``positive`` [, ``negative``].

    The same options, checks and messages as :func:`load_pairs` except ``nli_triplets`` (which needs the whole
    source). Columns are checked on the first row; bad rows are found when the rows are read.
    """
    spec = as_pair_source(spec)
    label = spec.label(name)
    fmt, mapping = spec.row_format, spec.mapping
    if not fmt.streamable:
        raise ValueError(f"{label}: format {fmt.name!r} cannot stream; use 'nli_entailment_pairs'")
    ds = _read(stream_source, spec, label, data_root, on_bad_row)
    wanted = {c: set(v) if isinstance(v, list | tuple | set) else {v} for c, v in (spec.where or {}).items()}
    label_column = next((src for src, dst in mapping.items() if dst == "label"), None)

    def keep(row: dict[str, Any]) -> bool:
        if any(row[c] not in values for c, values in wanted.items()):
            return False
        return spec.min_score is None or float(row[spec.score_column]) >= spec.min_score

    def training_row(row: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return convert_row({dst: row[src] for src, dst in mapping.items()}, fmt)
        except ValueError as err:
            if on_bad_row == "skip":
                return None
            message = bad_label_message(row[label_column], str(label_column), "a streamed row")
            raise ValueError(f"{label}: {message}") from err

    def convert_batch(batch: dict[str, list]) -> dict[str, list]:
        size = len(next(iter(batch.values())))
        rows = [training_row({k: v[i] for k, v in batch.items()}) for i in range(size)]
        kept = [r for r in rows if r is not None]
        return {f: [r[f] for r in kept] for f in fmt.fields(mapping) if f in TEXT_FIELDS}

    columns = spec.read_columns()
    ds = ds.select_columns(columns).filter(keep)
    ds = ds.map(convert_batch, batched=True, batch_size=64, remove_columns=columns)
    return ds.take(spec.limit) if spec.limit is not None else ds
