"""Natural language inference (SNLI, MultiNLI, SICK) rows turned into contrastive training data.

NLI rows are ``(premise, hypothesis, label)``. Labels are normalised to the Hugging Face order
``0 = entailment, 1 = neutral, 2 = contradiction`` from integers, from the strings ``"entailment"``, ``"neutral"``,
``"contradiction"`` (any case), or from a ``ClassLabel`` feature through its names. SNLI marks rows without a gold
label with ``-1``: that, a null or any other value is a bad row (an error, or dropped with ``on_bad_row="skip"``).

- :func:`nli_to_triplets`: for each premise, every entailed hypothesis (positive) with every contradicting hypothesis
  (hard negative) of the same premise, as in supervised SimCSE (Gao et al. 2021).
- :func:`nli_to_pairs`: each row as ``(anchor, positive, score)`` with a score per label, as in AnglE/CoSENT training
  on NLI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

NLI_LABELS: tuple[str, str, str] = ("entailment", "neutral", "contradiction")
"""Label names in Hugging Face order: the index is the integer label."""

ENTAILMENT, NEUTRAL, CONTRADICTION = 0, 1, 2

DEFAULT_PAIR_SCORES: dict[str, float] = {"entailment": 1.0, "neutral": 0.5, "contradiction": 0.0}
"""Score per label used by :func:`nli_to_pairs` unless told otherwise."""


def nli_label_id(value: object, names: Sequence[str] | None = None) -> int:
    """One NLI label as its id 0/1/2 (HF order), or -1 when it is missing or unknown: the row-by-row form of
    :func:`nli_label_ids` (streamed sources), with the same rules. ``names`` are a ``ClassLabel``'s names."""
    if isinstance(value, bool) or value is None:
        return -1
    if isinstance(value, int):
        if names is not None:
            name = names[value].lower() if 0 <= value < len(names) else None
            return NLI_LABELS.index(name) if name in NLI_LABELS else -1
        return value if 0 <= value <= 2 else -1
    if isinstance(value, str):
        name = value.strip().lower()
        return NLI_LABELS.index(name) if name in NLI_LABELS else -1
    return -1


def bad_label_message(value: object, label: str, where: str, count: int | None = None) -> str:
    """The error for a bad NLI label, shared by the in-memory and the streamed path."""
    total = f"; {count} such row(s) in all" if count is not None else ""
    return (
        f"bad NLI label {value!r} in column {label!r} at {where}; expected 0/1/2 or {'/'.join(NLI_LABELS)}{total}. "
        "Pass on_bad_row='skip' to drop them."
    )


def nli_label_ids(
    ds: datasets.Dataset,
    label: str = "label",
    on_bad_row: Literal["error", "skip"] = "error",
    locate: Callable[[int], str] | None = None,
) -> np.ndarray:
    """The label column of ``ds`` as int64 ids 0/1/2 (HF order), with -1 where a row is bad and skipped.

    Raises:
        ValueError: with ``on_bad_row="error"``, for the first row whose label is -1, null or unknown, naming the
            label and where the row is: ``locate(row)`` (e.g. ``line L of FILE``), else the 0-based row.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if label not in ds.column_names:
        raise ValueError(f"NLI data has no label column {label!r}; found columns {ds.column_names}")
    column = ds.with_format("arrow")[label]
    feature = ds.features[label]
    if isinstance(feature, datasets.ClassLabel):
        lookup = np.array([NLI_LABELS.index(n.lower()) if n.lower() in NLI_LABELS else -1 for n in feature.names])
        raw = np.asarray(pc.fill_null(column, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        valid = (raw >= 0) & (raw < len(lookup))
        ids = np.where(valid, lookup[np.clip(raw, 0, len(lookup) - 1)], -1)
    elif pa.types.is_integer(column.type):
        ids = np.asarray(pc.fill_null(column, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        ids = np.where((ids >= 0) & (ids <= 2), ids, -1)
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type):
        names = pc.utf8_lower(pc.utf8_trim_whitespace(column.cast(pa.string())))
        index = pc.index_in(names, value_set=pa.array(NLI_LABELS))
        ids = np.asarray(pc.fill_null(index, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    else:
        raise ValueError(f"NLI label column {label!r} has type {column.type}; expected integers or label names")

    bad = ids < 0
    if bad.any():
        if on_bad_row == "error":
            row = int(np.flatnonzero(bad)[0])
            where = locate(row) if locate is not None else f"row {row} (0-based)"
            raise ValueError(bad_label_message(column[row].as_py(), label, where, int(bad.sum())))
        log.warning("skipped %d of %d NLI rows with a missing or unknown label", int(bad.sum()), len(ids))
    return ids


def _frame(
    ds: datasets.Dataset,
    premise: str,
    hypothesis: str,
    label: str,
    on_bad_row: Literal["error", "skip"],
    locate: Callable[[int], str] | None = None,
) -> pd.DataFrame:
    missing = [c for c in (premise, hypothesis, label) if c not in ds.column_names]
    if missing:
        raise ValueError(f"NLI data is missing column(s) {missing}; found columns {ds.column_names}")
    ids = nli_label_ids(ds, label, on_bad_row, locate)
    frame = ds.select_columns([premise, hypothesis]).to_pandas()
    frame.columns = ["premise", "hypothesis"]
    frame["label"] = ids
    frame["row"] = np.arange(len(frame))
    return frame[ids >= 0]


def nli_to_triplets(
    ds: datasets.Dataset,
    premise: str = "premise",
    hypothesis: str = "hypothesis",
    label: str = "label",
    on_bad_row: Literal["error", "skip"] = "error",
    locate: Callable[[int], str] | None = None,
) -> datasets.Dataset:
    """Triplets ``(anchor, positive, negative)`` = (premise, entailed hypothesis, contradicting hypothesis).

    Rows are grouped by identical premise text. Each group yields every entailment hypothesis paired with every
    contradiction hypothesis, in order: premises by first appearance, then positives by row, then negatives by row.
    Premises lacking an entailment or a contradiction yield nothing; neutral rows are unused.

    Returns:
        A :class:`datasets.Dataset` with string columns ``anchor``, ``positive``, ``negative``.
    """
    frame = _frame(ds, premise, hypothesis, label, on_bad_row, locate)
    frame["group"] = pd.factorize(frame["premise"], sort=False)[0]  # premise ids in order of first appearance
    positives = frame.loc[frame["label"] == ENTAILMENT, ["group", "premise", "hypothesis", "row"]]
    negatives = frame.loc[frame["label"] == CONTRADICTION, ["group", "hypothesis", "row"]]
    merged = positives.merge(negatives, on="group", suffixes=("_pos", "_neg"))  # (P*N per premise) rows
    merged = merged.sort_values(["group", "row_pos", "row_neg"], kind="stable")
    return datasets.Dataset.from_dict(
        {
            "anchor": merged["premise"].tolist(),
            "positive": merged["hypothesis_pos"].tolist(),
            "negative": merged["hypothesis_neg"].tolist(),
        },
        features=datasets.Features({k: datasets.Value("string") for k in ("anchor", "positive", "negative")}),
    )


def nli_to_pairs(
    ds: datasets.Dataset,
    scores: dict[str, float] | None = None,
    premise: str = "premise",
    hypothesis: str = "hypothesis",
    label: str = "label",
    on_bad_row: Literal["error", "skip"] = "error",
    locate: Callable[[int], str] | None = None,
) -> datasets.Dataset:
    """Scored pairs ``(anchor, positive, score)`` = (premise, hypothesis, ``scores[label name]``), in row order.

    Args:
        scores: score per label name; labels left out are dropped, so ``{"entailment": 1.0}`` gives positive pairs
            only. Default :data:`DEFAULT_PAIR_SCORES` (entailment 1.0, neutral 0.5, contradiction 0.0).

    Returns:
        A :class:`datasets.Dataset` with ``anchor``, ``positive`` (string) and ``score`` (float32).
    """
    scores = dict(DEFAULT_PAIR_SCORES if scores is None else scores)
    unknown = sorted(set(scores) - set(NLI_LABELS))
    if unknown:
        raise ValueError(f"scores has unknown label name(s) {unknown}; known labels are {list(NLI_LABELS)}")
    frame = _frame(ds, premise, hypothesis, label, on_bad_row, locate)
    table = np.array([scores.get(name, np.nan) for name in NLI_LABELS], dtype=np.float32)
    values = table[frame["label"].to_numpy()]
    keep = ~np.isnan(values)
    return datasets.Dataset.from_dict(
        {
            "anchor": frame["premise"].to_numpy()[keep].tolist(),
            "positive": frame["hypothesis"].to_numpy()[keep].tolist(),
            "score": values[keep],
        },
        features=datasets.Features(
            anchor=datasets.Value("string"), positive=datasets.Value("string"), score=datasets.Value("float32")
        ),
    )
