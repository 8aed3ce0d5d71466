"""Turn rows of text pairs or triplets into a tokenized batch dict with named fields.

Rows are dicts with ``anchor`` and ``positive`` (str), optionally ``negative`` (str), ``score`` (float) and
``label`` (int). The batch is::

    {
        "anchor":   {"input_ids": (B, La), "attention_mask": (B, La)[, "token_type_ids": (B, La)]},
        "positive": {... (B, Lp)},
        "negative": {... (B, Ln)},           # only when the rows have a negative
        "score":    float32 (B,),             # only when the rows have a score
        "label":    int64 (B,),               # only when the rows have a label
        "anchor_ids", "positive_ids"[, "negative_ids"]: int64 (B,),
    }

Each field is padded to its own longest sequence (dynamic padding). ``*_ids`` number the distinct normalised texts
(stripped, case-folded, whitespace collapsed) of the whole batch across all fields, so a loss can tell a real
duplicate from a true negative (equal ids = same text) without hashing collisions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

TEXT_FIELDS = ("anchor", "positive", "negative")
FIELDS = (*TEXT_FIELDS, "score", "label")


def _present(row: Mapping[str, Any]) -> list[str]:
    return [key for key in FIELDS if row.get(key) is not None]


def normalize_text(text: str) -> str:
    """The key used to detect duplicate texts: whitespace collapsed and stripped, then case-folded."""
    return " ".join(text.split()).casefold()


class PairCollator:
    """Tokenize ``anchor``/``positive``/``negative`` rows into a batch dict (format in the module docstring).

    Args:
        tokenizer: a Hugging Face tokenizer with a pad token.
        max_length: longest sequence kept per text; longer texts are truncated.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = 128) -> None:
        if tokenizer.pad_token is None:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has no pad token; dynamic padding needs one "
                "(lightembed.backbones.load_tokenizer sets it for decoder models)"
            )
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return dict(encoded)  # input_ids, attention_mask[, token_type_ids]: (B, L)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("PairCollator got an empty list of rows")
        expected = _present(rows[0])
        for required in ("anchor", "positive"):
            if required not in expected:
                raise ValueError(f"rows need an {required!r} text; got keys {sorted(rows[0])}")
        for i, row in enumerate(rows):
            if _present(row) != expected:
                raise ValueError(f"row {i} of the batch has fields {_present(row)} but row 0 has {expected}")
        fields = [f for f in TEXT_FIELDS if f in expected]

        batch: dict[str, Any] = {}
        ids: dict[str, int] = {}  # normalised text -> id, shared by all fields of this batch
        for field in fields:
            texts = [row[field] for row in rows]
            batch[field] = self._encode(texts)
            keys = [ids.setdefault(normalize_text(t), len(ids)) for t in texts]
            batch[f"{field}_ids"] = torch.tensor(keys, dtype=torch.int64)  # (B,)
        if "score" in expected:
            batch["score"] = torch.tensor([float(row["score"]) for row in rows], dtype=torch.float32)  # (B,)
        if "label" in expected:
            batch["label"] = torch.tensor([int(row["label"]) for row in rows], dtype=torch.int64)  # (B,)
        return batch
