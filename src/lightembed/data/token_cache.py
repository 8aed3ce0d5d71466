"""Tokenise a training dataset once and keep the tokens on disk, so the next run with the same data skips it.

Used by :class:`~lightembed.data.multi.MultiDatasetDataModule` with ``cache_tokenization``: each in-memory training
dataset gets ``<field>.<feature>`` token columns, written to ``<lightembed cache>/tokenized/`` under a key of the
source files' sha256, the source options, the tokenizer and ``max_length`` (:func:`cache_file`).
:class:`PretokenizedPairCollator` pads those tokens instead of tokenising the texts again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from lightembed.data.batches import Features, PairBatch
from lightembed.data.collators import TEXT_FIELDS, PairCollator
from lightembed.data.pair_sources import PairSource
from lightembed.data.sources import source_fingerprint
from lightembed.packaged import cache_dir
from lightembed.provenance import bytes_sha256

log = logging.getLogger(__name__)

TOKENIZATION_CACHE_VERSION = 1
"""Part of the tokenisation cache key; bump it when the cached columns change."""


class PretokenizedPairCollator(PairCollator):
    """:class:`~lightembed.data.collators.PairCollator` for rows that carry their tokens (``anchor.input_ids``, ...,
    written by :func:`tokenized`): the tokens are padded instead of the texts
    tokenised again; everything else (checks, ``*_ids``, the batch format) is PairCollator's. A text without cached
    tokens, or a field with an instruction, is tokenised as usual."""

    def __init__(self, tokenizer, max_length: int = 128, instructions: Mapping[str, str] | None = None) -> None:
        super().__init__(tokenizer, max_length, instructions)
        self._tokens: dict[str, dict[str, list[int]]] = {}
        if hasattr(tokenizer, "deprecation_warnings"):  # padding token lists with a fast tokenizer is what we want
            tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> PairBatch:
        self._tokens = {}
        plain = []
        for row in rows:
            for f in TEXT_FIELDS:
                features = {k.split(".", 1)[1]: v for k, v in row.items() if k.startswith(f"{f}.")}
                if features and row.get(f) is not None:
                    self._tokens[row[f]] = features  # equal texts have equal tokens
            plain.append({k: v for k, v in row.items() if "." not in k})
        try:
            return super().__call__(plain)
        finally:
            self._tokens = {}

    def encode_texts(self, texts: list[str], instruction: str | None = None) -> Features:
        if instruction or not texts or any(t not in self._tokens for t in texts):
            return super().encode_texts(texts, instruction)
        padded = self.tokenizer.pad([self._tokens[t] for t in texts], padding="longest", return_tensors="pt")
        return Features(**padded)  # input_ids, attention_mask[, token_type_ids]: (B, L)


def tokenize_fields(batch: dict[str, list], tokenizer, max_length: int, fields: list[str]) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in fields:
        encoded = tokenizer(batch[f], truncation=True, max_length=max_length)
        for key, values in encoded.items():
            if key != "attention_mask":  # rebuilt by padding
                out[f"{f}.{key}"] = values
    return out


def cache_file(
    name: str,
    spec: PairSource,
    fields: Sequence[str],
    data_root: str | None,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_name: str,
    max_length: int,
    mixed_fields: bool,
) -> Path:
    """Where the cached tokens of training dataset ``name`` live: a key of everything that decides them."""
    key = {
        "version": TOKENIZATION_CACHE_VERSION,
        "source": source_fingerprint(spec.source, spec.split, data_root),
        "spec": asdict(spec),
        "fields": list(fields),
        "tokenizer": tokenizer_name,
        "tokenizer_class": type(tokenizer).__name__,
        "vocab": len(tokenizer),
        "max_length": max_length,
        "mixed_fields": mixed_fields,
    }
    digest = bytes_sha256(json.dumps(key, sort_keys=True, default=str).encode())
    return cache_dir() / "tokenized" / f"{name}-{digest[:20]}.arrow"


def tokenized(
    ds: datasets.Dataset, name: str, path: Path, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> datasets.Dataset:
    """``ds`` with the token columns of its text fields, read from ``path`` when a run wrote them before."""
    fields = [f for f in TEXT_FIELDS if f in ds.column_names]
    path.parent.mkdir(parents=True, exist_ok=True)
    cached = path.is_file()
    ds = ds.map(
        tokenize_fields,
        batched=True,
        batch_size=1000,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "fields": fields},
        cache_file_name=str(path),
        load_from_cache_file=True,
        new_fingerprint=path.stem,
        desc=f"tokenizing {name}",
    )
    log.info("%s tokens of %r: %s", "read cached" if cached else "cached", name, path)
    return ds
