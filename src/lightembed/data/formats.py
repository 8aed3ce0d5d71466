"""Row formats: how the columns of a source become the fields of training rows, each format defined once.

A format names the source columns it reads by default (Hub column names, so a local copy and the Hub dataset read
alike), the fields they become, and how rows are converted. Every data module and both reading paths (in memory and
streamed) take their formats from :data:`FORMATS`:

==================== ============================================ ===============================================
format               default ``columns`` (source -> field)         training rows
==================== ============================================ ===============================================
pairs                sentence1->anchor, sentence2->positive       anchor, positive (a third column mapped to
                                                                  ``negative`` makes triplets)
scored_pairs         sentence1->anchor, sentence2->positive,      anchor, positive, score
                     score->score
triplets             anchor, positive, negative                   anchor, positive, negative
nli_triplets         premise, hypothesis, label                   premise, entailed hypothesis, contradicting one
nli_scored_pairs     premise, hypothesis, label                   premise, hypothesis, score per label
                                                                  (``nli_scores``)
nli_entailment_pairs premise, hypothesis, label                   premise, entailed hypothesis
labelled_texts       text->anchor, label->label                   anchor, label (class id; string labels get ids
                                                                  in sorted order, the mapping logged)
labelled_pairs       sentence1->anchor, sentence2->positive,      anchor, positive, label (0 or 1, e.g. MRPC's
                     label->label                                 1 = paraphrase)
nli_labelled_pairs   premise, hypothesis, label                   premise, hypothesis, label 1 (entailment) or 0
                                                                  (contradiction); neutral pairs are dropped
==================== ============================================ ===============================================

``labelled_texts`` feeds the batch triplet losses (class ids, best with P x K class batches); ``labelled_pairs`` and
``nli_labelled_pairs`` feed the 0/1 pair losses (contrastive, online contrastive).

STS sets (validation, test) are ``scored_pairs`` with the default columns (:data:`STS_COLUMNS`), read by
:func:`load_sts`: scores in :data:`STS_SCORE_RANGE` (0-5) unless the data module's ``sts_score_range`` says
otherwise, and not all equal.

The old name ``nli_pairs`` meant ``nli_scored_pairs`` in :class:`~lightembed.data.PairDataModule` but
``nli_entailment_pairs`` in a multi-dataset source; it still reads as it did in each place, with a warning naming
the new name (:func:`format_named`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import datasets

from lightembed.data.collators import TEXT_FIELDS
from lightembed.data.nli import DEFAULT_PAIR_SCORES, NLI_LABELS, nli_label_id, nli_to_pairs, nli_to_triplets
from lightembed.data.sources import OnBadRow, load_source, resolve_source

NLI_FIELDS = ("premise", "hypothesis", "label")
"""Fields an ``nli_*`` format maps its source columns to, before the conversion."""

FormatName = Literal[
    "pairs",
    "scored_pairs",
    "triplets",
    "nli_triplets",
    "nli_scored_pairs",
    "nli_entailment_pairs",
    "labelled_texts",
    "labelled_pairs",
    "nli_labelled_pairs",
]

Conversion = Literal[
    "none", "nli_triplets", "nli_scored_pairs", "nli_entailment_pairs", "nli_labelled_pairs", "class_ids", "binary"
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowFormat:
    """One row format.

    Attributes:
        name: the format's name in configs.
        columns: default source column -> field.
        required: fields every mapping must produce.
        optional: fields a mapping may add (``pairs`` + ``negative``).
        conversion: how mapped rows become training rows (NLI rows are regrouped; the others are kept).
    """

    name: str
    columns: Mapping[str, str]
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    conversion: Conversion = "none"

    @property
    def is_nli(self) -> bool:
        return self.conversion.startswith("nli_")

    @property
    def streamable(self) -> bool:
        """Whether rows convert one at a time; ``nli_triplets`` groups the hypotheses of a premise over the source,
        and ``labelled_texts`` numbers the label names of the whole source."""
        return self.conversion not in ("nli_triplets", "class_ids")

    @property
    def has_score(self) -> bool:
        """Whether its training rows carry a ``score``."""
        return "score" in self.required or self.conversion == "nli_scored_pairs"

    def mapping(self, columns: Mapping[str, str] | None, option: str | None = None) -> dict[str, str]:
        """``columns`` (default: the format's) checked against the fields the format reads."""
        mapping = dict(self.columns if columns is None else columns)
        option = option or f"columns for format {self.name!r}"
        fields = list(mapping.values())
        if len(set(fields)) != len(fields):
            raise ValueError(f"{option} map two source columns to the same field: {mapping}")
        missing = [f for f in self.required if f not in fields]
        unknown = [f for f in fields if f not in (*self.required, *self.optional)]
        if missing or unknown:
            required = ", ".join(map(repr, self.required))
            optional = f" and optionally {', '.join(map(repr, self.optional))}" if self.optional else ""
            raise ValueError(
                f"{option} must map source columns to each of {required}{optional}, one column per field; got {mapping}"
            )
        return mapping

    def fields(self, mapping: Mapping[str, str]) -> list[str]:
        """The fields of its training rows, in batch order."""
        if self.conversion == "nli_triplets":
            return list(TEXT_FIELDS)
        if self.conversion == "nli_entailment_pairs":
            return ["anchor", "positive"]
        if self.conversion == "nli_scored_pairs":
            return ["anchor", "positive", "score"]
        if self.conversion == "nli_labelled_pairs":
            return ["anchor", "positive", "label"]
        present = set(mapping.values())
        return [f for f in (*TEXT_FIELDS, "score", "label") if f in present]


_NLI_COLUMNS = {"premise": "premise", "hypothesis": "hypothesis", "label": "label"}

FORMATS: dict[str, RowFormat] = {
    f.name: f
    for f in (
        RowFormat("pairs", {"sentence1": "anchor", "sentence2": "positive"}, ("anchor", "positive"), ("negative",)),
        RowFormat(
            "scored_pairs",
            {"sentence1": "anchor", "sentence2": "positive", "score": "score"},
            ("anchor", "positive", "score"),
        ),
        RowFormat(
            "triplets",
            {"anchor": "anchor", "positive": "positive", "negative": "negative"},
            ("anchor", "positive", "negative"),
        ),
        RowFormat("nli_triplets", _NLI_COLUMNS, NLI_FIELDS, conversion="nli_triplets"),
        RowFormat("nli_scored_pairs", _NLI_COLUMNS, NLI_FIELDS, conversion="nli_scored_pairs"),
        RowFormat("nli_entailment_pairs", _NLI_COLUMNS, NLI_FIELDS, conversion="nli_entailment_pairs"),
        RowFormat("labelled_texts", {"text": "anchor", "label": "label"}, ("anchor", "label"), conversion="class_ids"),
        RowFormat(
            "labelled_pairs",
            {"sentence1": "anchor", "sentence2": "positive", "label": "label"},
            ("anchor", "positive", "label"),
            conversion="binary",
        ),
        RowFormat("nli_labelled_pairs", _NLI_COLUMNS, NLI_FIELDS, conversion="nli_labelled_pairs"),
    )
}
"""Every row format by name."""

DEPRECATED_FORMATS = {"nli_pairs": ("nli_scored_pairs", "nli_entailment_pairs")}
"""Old ambiguous names -> the new names they split into."""

STS_COLUMNS: tuple[str, ...] = tuple(FORMATS["scored_pairs"].columns)
"""Columns of an STS source (``sentence1``, ``sentence2``, ``score``); they become ``anchor``, ``positive``,
``score``."""


def format_named(
    name: str, option: str, allowed: tuple[str, ...] = tuple(FORMATS), old_meaning: str | None = None
) -> RowFormat:
    """The format called ``name`` for option ``option``, if ``allowed`` there.

    ``nli_pairs`` (deprecated) reads as ``old_meaning``, what it meant for this option, with a FutureWarning naming
    the new name; without an ``old_meaning`` it is an error naming both new names.
    """
    if name in DEPRECATED_FORMATS:
        scored, entailment = DEPRECATED_FORMATS[name]
        meanings = f"{scored!r} (every NLI label as a scored pair) or {entailment!r} (entailment pairs only)"
        if old_meaning is None:
            raise ValueError(f"{option}={name!r} is ambiguous and no longer read: use {meanings}")
        warnings.warn(
            f"{option}={name!r} is deprecated: it reads as {old_meaning!r} here; write {option}: {old_meaning} "
            f"(the new names are {meanings})",
            FutureWarning,
            stacklevel=3,
        )
        name = old_meaning
    if name not in allowed:
        raise ValueError(f"{option} must be one of {list(allowed)}, got {name!r}")
    return FORMATS[name]


def check_nli_scores(scores: Mapping[str, float] | None) -> dict[str, float]:
    """Score per NLI label name for ``nli_scored_pairs`` (default entailment 1.0, neutral 0.5, contradiction 0.0)."""
    scores = dict(DEFAULT_PAIR_SCORES if scores is None else scores)
    unknown = sorted(set(scores) - set(NLI_LABELS))
    if unknown:
        raise ValueError(f"nli_scores has unknown label name(s) {unknown}; known labels are {list(NLI_LABELS)}")
    return scores


def checked_columns(fmt: RowFormat, mapping: Mapping[str, str]) -> tuple[list[str], str | None]:
    """The source columns that must hold text, and the one that must hold finite scores (if any)."""
    text = [src for src, dst in mapping.items() if dst not in ("score", "label")]
    score = next((src for src, dst in mapping.items() if dst == "score"), None)
    return text, score


def to_fields(ds: datasets.Dataset, mapping: Mapping[str, str]) -> datasets.Dataset:
    """The mapped source columns only, renamed to their fields."""
    ds = ds.select_columns(list(mapping))
    renames = {src: dst for src, dst in mapping.items() if src != dst}
    return ds.rename_columns(renames) if renames else ds


def convert(
    ds: datasets.Dataset,
    fmt: RowFormat,
    on_bad_row: OnBadRow = "error",
    nli_scores: Mapping[str, float] | None = None,
    locate: Callable[[int], str] | None = None,
) -> datasets.Dataset:
    """Rows with the fields of ``fmt`` (after :func:`to_fields`) converted to training rows (in memory);
    ``locate(row)`` says where a row with a bad NLI label is in the source (``line L of FILE``)."""
    if fmt.conversion == "nli_triplets":
        return nli_to_triplets(ds, on_bad_row=on_bad_row, locate=locate)
    if fmt.conversion == "nli_scored_pairs":
        return nli_to_pairs(ds, check_nli_scores(nli_scores), on_bad_row=on_bad_row, locate=locate)
    if fmt.conversion == "nli_entailment_pairs":
        return nli_to_pairs(ds, {"entailment": 1.0}, on_bad_row=on_bad_row, locate=locate).remove_columns("score")
    if fmt.conversion == "nli_labelled_pairs":
        pairs = nli_to_pairs(ds, {"entailment": 1.0, "contradiction": 0.0}, on_bad_row=on_bad_row, locate=locate)
        return binary_labels(pairs.rename_column("score", "label"), "error")
    if fmt.conversion == "class_ids":
        return class_ids(ds, on_bad_row, locate)
    if fmt.conversion == "binary":
        return binary_labels(ds, on_bad_row, locate)
    return ds


def _bad_label(on_bad_row: OnBadRow, bad: list[int], what: str, locate: Callable[[int], str] | None) -> None:
    """Raise naming the first bad row, or log how many are skipped."""
    if not bad:
        return
    if on_bad_row == "error":
        where = locate(bad[0]) if locate is not None else f"row {bad[0]}"
        raise ValueError(f"{where}: {what} ({len(bad)} such row(s); on_bad_row: skip drops them)")
    log.warning("skipped %d row(s) with %s", len(bad), what)


def _as_class(label: Any) -> int | str | None:
    """An int class id, a label name, or None (missing or unusable): bools and floats like 2.0 read as ints."""
    if label is None or isinstance(label, bool):
        return None if label is None else int(label)
    if isinstance(label, int | float):
        return int(label) if float(label).is_integer() and label >= 0 else None
    if isinstance(label, str):
        return label.strip() or None
    return None


def class_ids(
    ds: datasets.Dataset, on_bad_row: OnBadRow = "error", locate: Callable[[int], str] | None = None
) -> datasets.Dataset:
    """Rows ``anchor``, ``label`` with ``label`` an int class id: non-negative ints stay as they are; label names
    (strings) get ids 0, 1, ... in sorted order, the mapping logged. A missing label, a negative or fractional number,
    or a mix of names and numbers is a bad row."""
    labels = [_as_class(label) for label in ds["label"]]
    names = sorted({label for label in labels if isinstance(label, str)})
    numbers = any(isinstance(label, int) for label in labels)
    if names and numbers:
        first = next(i for i, label in enumerate(labels) if isinstance(label, int))
        where = locate(first) if locate is not None else f"row {first}"
        raise ValueError(f"{where}: labels mix names ({names[:3]}...) and numbers; use one kind in the label column")
    bad = [i for i, label in enumerate(labels) if label is None]
    _bad_label(on_bad_row, bad, "a missing, negative or fractional class label", locate)
    ids = {name: i for i, name in enumerate(names)}
    if names:
        log.info("labelled_texts: class ids %s", ids)
    keep = [i for i, label in enumerate(labels) if label is not None]
    values = [ids[labels[i]] if names else labels[i] for i in keep]
    ds = ds.select(keep) if len(keep) < len(ds) else ds
    return ds.remove_columns("label").add_column("label", values)


def _binary(label: Any) -> int | None:
    """0 or 1 from ``0``/``1``/``0.0``/``1.0``/``true``/``false``/``"1"``...; None for anything else."""
    return {"0": 0, "1": 1, "false": 0, "true": 1}.get(str(label).strip().lower().removesuffix(".0"))


def binary_labels(
    ds: datasets.Dataset, on_bad_row: OnBadRow = "error", locate: Callable[[int], str] | None = None
) -> datasets.Dataset:
    """Rows with ``label`` 0 or 1 as an int (``1``, ``1.0``, ``true`` and ``"1"`` read as 1); other labels are bad."""
    labels = [_binary(label) for label in ds["label"]]
    bad = [i for i, label in enumerate(labels) if label is None]
    _bad_label(on_bad_row, bad, "a label that is not 0 or 1", locate)
    keep = [i for i, label in enumerate(labels) if label is not None]
    ds = ds.select(keep) if len(keep) < len(ds) else ds
    return ds.remove_columns("label").add_column("label", [labels[i] for i in keep])


def convert_row(
    row: Mapping[str, Any], fmt: RowFormat, nli_scores: Mapping[str, float] | None = None
) -> dict[str, Any] | None:
    """One row with the fields of ``fmt`` converted to a training row (streamed path); None drops it.

    Raises:
        ValueError: an NLI label that is missing or unknown (the caller decides whether to skip the row).
    """
    if fmt.conversion == "binary":
        label = _binary(row["label"])
        if label is None:
            raise ValueError(f"bad 0/1 label {row['label']!r}")
        return {**row, "label": label}
    if not fmt.is_nli:
        return dict(row)
    if not fmt.streamable:
        raise ValueError(f"format {fmt.name!r} groups rows over the whole source and cannot convert one row")
    label = nli_label_id(row["label"])
    if label < 0:
        raise ValueError(f"bad NLI label {row['label']!r}")
    name = NLI_LABELS[label]
    if fmt.conversion == "nli_labelled_pairs":
        pair = {"anchor": row["premise"], "positive": row["hypothesis"]}
        return {**pair, "label": int(name == "entailment")} if name != "neutral" else None
    if fmt.conversion == "nli_entailment_pairs":
        return {"anchor": row["premise"], "positive": row["hypothesis"]} if name == "entailment" else None
    scores = check_nli_scores(nli_scores)
    if name not in scores:
        return None
    return {"anchor": row["premise"], "positive": row["hypothesis"], "score": float(scores[name])}


STS_SCORE_RANGE: tuple[float, float] = (0.0, 5.0)
"""Gold scores of an STS set: 0 (unrelated) to 5 (same meaning), the scale of STS12-16, STS-B and SICK-R."""


def load_sts(
    source: str,
    split: str,
    data_root: str | None = None,
    on_bad_row: OnBadRow = "error",
    score_range: tuple[float, float] | None = STS_SCORE_RANGE,
) -> datasets.Dataset:
    """An STS set (:data:`STS_COLUMNS`) as rows ``anchor``, ``positive``, ``score``: validation and test data.

    A score outside ``score_range`` (None: any finite score) is a bad row. A set whose scores are all equal, or
    that has fewer than 2 pairs, is an error naming it: Spearman is undefined there (it would be logged as 0).
    """
    fmt = FORMATS["scored_pairs"]
    mapping = dict(fmt.columns)
    ds = load_source(
        source, list(mapping), split, data_root, score_column="score", score_range=score_range, on_bad_row=on_bad_row
    )
    scores = ds.with_format("numpy")["score"]
    if len(scores) < 2 or bool((scores == scores[0]).all()):
        where = resolve_source(source, split, data_root).describe()
        same = f"the same score ({float(scores[0]):g}) on every pair" if len(scores) else ""
        what = f"only {len(scores)} pair(s)" if len(scores) < 2 else same
        raise ValueError(
            f"STS set {where} has {what}, so the Spearman correlation is undefined: use a set with at least 2 "
            "pairs and varied gold scores"
        )
    return to_fields(ds, mapping)
