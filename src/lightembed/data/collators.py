"""Turn rows of text pairs or triplets into a tokenized batch dict with named fields.

Rows are dicts with ``anchor`` and ``positive`` (str), optionally ``negative`` (str), ``score`` (float) and
``label`` (int); a labelled row may hold ``anchor`` alone (a (text, class) row). The batch is::

    {
        "anchor":   {"input_ids": (B, La), "attention_mask": (B, La)[, "token_type_ids": (B, La)]},
        "positive": {... (B, Lp)},           # absent for (text, class) rows
        "negative": {... (B, Ln)},           # only when the rows have a negative
        "score":    float32 (B,),             # only when the rows have a score
        "label":    int64 (B,),               # only when the rows have a label
        "anchor_ids", "positive_ids"[, "negative_ids"]: int64 (B,),
    }

With ``instructions`` (e.g. ``{"anchor": "Retrieve semantically similar text: "}``) a field's texts are prefixed with
the instruction and that field's features also hold ``pool_mask`` (B, L): the attention mask with the instruction's
tokens zeroed, so pooling averages over the text only (LLM2Vec, instructed queries). Duplicate ids are computed on
the texts without the instruction.

Each field is padded to its own longest sequence (dynamic padding). ``*_ids`` are a stable 64-bit hash of each
text's normalised form (stripped, case-folded, whitespace collapsed; :func:`text_ids`), so a loss can tell a real
duplicate from a true negative (equal ids = same text). The hash is the same in every process, so ids gathered from
several DDP ranks still match identical texts across ranks; two different texts share an id with probability about
``B² / 2⁶⁵`` for a batch of ``B`` texts (1e-11 at B = 16384).

For unlabeled text, :class:`SentenceCollator` tokenizes single texts (unsupervised SimCSE) and :class:`MNTPCollator`
masks rows of token ids (masked next-token prediction); their batch formats are in their docstrings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import xxhash  # comes with `datasets`
from transformers import PreTrainedTokenizerBase

from lightembed.data.batches import Features, MNTPBatch, PairBatch, SentenceBatch

TEXT_FIELDS = ("anchor", "positive", "negative")
FIELDS = (*TEXT_FIELDS, "score", "label")


def _present(row: Mapping[str, Any]) -> list[str]:
    return [key for key in FIELDS if row.get(key) is not None]


def normalize_text(text: str) -> str:
    """The key used to detect duplicate texts: whitespace collapsed and stripped, then case-folded."""
    return " ".join(text.split()).casefold()


def text_hashes(texts: Iterable[str]) -> np.ndarray:
    """A stable int64 hash of each text's :func:`normalize_text` form: ``(N,)`` int64.

    Texts with the same normalised form get the same hash in every process (xxh3, not Python's salted ``hash``), so
    every DDP rank builds the same batches and ids gathered across ranks identify the same texts.
    """
    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(normalize_text(text).encode("utf-8")) for text in texts), dtype=np.uint64).view(np.int64)


def text_ids(texts: Iterable[str]) -> torch.Tensor:
    """The duplicate ids of ``texts`` (:func:`text_hashes` as a tensor): ``(N,)`` int64, equal ids = same text."""
    return torch.from_numpy(text_hashes(texts))


class PairCollator:
    """Tokenize ``anchor``/``positive``/``negative`` rows into a batch dict (format in the module docstring).

    Args:
        tokenizer: a Hugging Face tokenizer with a pad token.
        max_length: longest sequence kept per text; longer texts are truncated.
        instructions: field -> instruction prefixed to that field's texts and excluded from pooling.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int = 128, instructions: Mapping[str, str] | None = None
    ) -> None:
        if tokenizer.pad_token is None:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has no pad token; dynamic padding needs one "
                "(lightembed.backbones.load_tokenizer sets it for decoder models)"
            )
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.instructions = dict(instructions or {})
        unknown = set(self.instructions) - set(TEXT_FIELDS)
        if unknown:
            raise ValueError(
                f"instructions for unknown fields {sorted(unknown)} (option `instructions`); use {TEXT_FIELDS}"
            )
        if self.instructions and not getattr(tokenizer, "is_fast", False):
            raise ValueError("instructions need a fast tokenizer (character offsets locate the instruction's tokens)")

    def encode_texts(self, texts: list[str], instruction: str | None = None) -> Features:
        """Tokenize ``texts`` (dynamic padding); with ``instruction``, prefix it and add ``pool_mask`` without it."""
        if not instruction:
            encoded = self.tokenizer(
                texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            return Features(**encoded)  # input_ids, attention_mask[, token_type_ids]: (B, L)
        encoded = self.tokenizer(
            [instruction + text for text in texts],
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_offsets_mapping=True,
        )
        offsets = encoded.pop("offset_mapping")  # (B, L, 2) character span of each token
        features = Features(**encoded)
        # A token belongs to the text when it ends after the instruction; specials have the empty span (0, 0).
        in_text = offsets[..., 1] > len(instruction)  # (B, L)
        features["pool_mask"] = features["attention_mask"] * in_text.to(features["attention_mask"].dtype)  # (B, L)
        empty = (features["pool_mask"].sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"rows {empty}: no token of the text is left after the instruction {instruction!r} "
                f"within max_length={self.max_length}"
            )
        return features

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> PairBatch:
        if not rows:
            raise ValueError("PairCollator got an empty list of rows")
        expected = _present(rows[0])
        # a row with a label may be a single text (``labelled_texts``, for the batch triplet losses)
        for required in ("anchor",) if "label" in expected else ("anchor", "positive"):
            if required not in expected:
                raise ValueError(f"rows need an {required!r} text; got keys {sorted(rows[0])}")
        for i, row in enumerate(rows):
            if _present(row) != expected:
                raise ValueError(f"row {i} of the batch has fields {_present(row)} but row 0 has {expected}")
        fields = [f for f in TEXT_FIELDS if f in expected]

        batch = PairBatch()
        for field in fields:
            texts = [row[field] for row in rows]
            batch[field] = self.encode_texts(texts, self.instructions.get(field))  # type: ignore[literal-required]
            batch[f"{field}_ids"] = text_ids(texts)  # type: ignore[literal-required]  # (B,) one id space for every field (and every rank)
        if "score" in expected:
            batch["score"] = torch.tensor([float(row["score"]) for row in rows], dtype=torch.float32)  # (B,)
        if "label" in expected:
            batch["label"] = torch.tensor([int(row["label"]) for row in rows], dtype=torch.int64)  # (B,)
        return batch


class SentenceCollator(PairCollator):
    """Tokenize single texts for unsupervised SimCSE: rows ``{"text": str}`` (or plain strings) into::

        {"text": {"input_ids": (B, L), "attention_mask": (B, L)[, "token_type_ids": (B, L)]}, "text_ids": int64 (B,)}

    ``text_ids`` are the texts' hashes as in :class:`PairCollator` (equal ids = same text), so an in-batch loss can
    ignore a duplicate instead of treating it as a negative. The SimCSE stage encodes ``batch["text"]`` twice with
    dropout on; the two views of row ``i`` are each other's positive.

    Args:
        tokenizer: a Hugging Face tokenizer with a pad token.
        max_length: longest sequence kept per text; longer texts are truncated.
    """

    def __call__(self, rows: Sequence[Mapping[str, Any] | str]) -> SentenceBatch:  # type: ignore[override]
        if not rows:
            raise ValueError("SentenceCollator got an empty list of rows")
        texts = [row if isinstance(row, str) else row["text"] for row in rows]
        return SentenceBatch(text=self.encode_texts(texts), text_ids=text_ids(texts))  # (B,)


IGNORE_INDEX = -100
"""Label of positions that are not predicted (the default ``ignore_index`` of ``torch.nn.functional.cross_entropy``)."""

MaskStrategy = Literal["bert", "all_mask"]

FALLBACK_MASK_TOKEN = "_"
"""Mask token used when the tokenizer has none (LLM2Vec does this for Llama tokenizers)."""


class MNTPCollator:
    """Mask token rows for masked next-token prediction (MNTP, LLM2Vec, BehnamGhader et al. 2024, arXiv 2404.05961).

    Rows are token id lists (``{"input_ids": [...]}`` as in a chunked corpus, or plain lists); rows of different
    lengths are padded with the pad token on the tokenizer's ``padding_side``. The batch is::

        {"input_ids": int64 (B, L), "attention_mask": int64 (B, L), "labels": int64 (B, L)}

    ``labels`` holds the original id at each selected position and ``-100`` everywhere else. Each eligible position
    is selected independently with probability ``mask_probability``. A selected position becomes the mask token
    (``strategy="all_mask"``), or, with ``strategy="bert"`` (Devlin et al. 2019), the mask token 80% of the time, a
    random non-special token 10% and stays unchanged 10%. Never selected: special tokens of the tokenizer (BOS, EOS,
    PAD, CLS, SEP, UNK, MASK), padding, and the first real token of each row (see below). If a batch would select
    nothing although some position is eligible, one eligible position is selected at random, so the loss is never
    an average over zero tokens.

    This class only masks. The MNTP *shift* belongs to the loss in the training stage: the prediction for a masked
    position ``i`` is read from the decoder's logits at position ``i - 1``. Because of that shift the first real
    token of a row has no prediction, which is why it is never selected.

    The mask token is the tokenizer's own mask token, else ``"_"`` (a tokenizer without one, like Llama's), or the
    ``mask_token`` option; it must be a single known token of the vocabulary.

    Randomness comes from torch's global RNG (seeded by Lightning's ``seed_everything``; each DataLoader worker gets
    its own stream). With ``seed`` set, each batch is masked by a generator seeded from ``seed`` and the batch's
    token ids instead, so the same batch is always masked the same way: use it for validation.

    Args:
        tokenizer: the model's tokenizer (pad token required only when rows differ in length).
        mask_probability: probability that an eligible position is selected, in (0, 1).
        strategy: ``"bert"`` (80% mask / 10% random / 10% unchanged) or ``"all_mask"``.
        mask_token: token to mask with; default the tokenizer's mask token, else ``"_"``.
        seed: make masking a function of ``(seed, batch)``; None uses torch's global RNG.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        mask_probability: float = 0.2,
        strategy: MaskStrategy = "bert",
        mask_token: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.check_options(mask_probability, strategy)
        self.tokenizer = tokenizer
        self.mask_probability = float(mask_probability)
        self.strategy = strategy
        self.seed = seed
        self.mask_token = mask_token or tokenizer.mask_token or FALLBACK_MASK_TOKEN
        self.mask_token_id = self._token_id(self.mask_token, explicit=mask_token is not None)
        special = sorted({int(i) for i in tokenizer.all_special_ids if i is not None})
        self.special_ids = torch.tensor(special, dtype=torch.int64)
        is_special = torch.zeros(len(tokenizer), dtype=torch.bool)
        is_special[self.special_ids[self.special_ids < len(tokenizer)]] = True
        self.random_candidates = torch.nonzero(~is_special).squeeze(1)  # (V',) ids a random replacement may take

    @staticmethod
    def check_options(mask_probability: float, strategy: str) -> None:
        """Raise a ValueError naming the option if ``mask_probability`` or ``strategy`` is invalid."""
        if not 0.0 < mask_probability < 1.0:
            raise ValueError(f"mask_probability must be in (0, 1), got {mask_probability}")
        if strategy not in ("bert", "all_mask"):
            raise ValueError(f"strategy (MNTP mask strategy) must be 'bert' or 'all_mask', got {strategy!r}")

    def _token_id(self, token: str, explicit: bool) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        unknown = (
            token_id is None
            or not isinstance(token_id, int)
            or not 0 <= token_id < len(self.tokenizer)
            or (token_id == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token)
        )
        if unknown:
            how = "the mask_token option" if explicit else "the fallback for a tokenizer without a mask token"
            raise ValueError(
                f"mask token {token!r} ({how}) is not a single token of the vocabulary of "
                f"{type(self.tokenizer).__name__}; set the option mask_token to a token the tokenizer knows"
            )
        return int(token_id)

    def _generator(self, input_ids: torch.Tensor) -> torch.Generator | None:
        if self.seed is None:
            return None
        digest = hashlib.blake2b(input_ids.numpy().tobytes(), digest_size=8, key=str(self.seed).encode())
        return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))

    def _pad(self, rows: Sequence[Mapping[str, Any] | Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [list(row["input_ids"] if isinstance(row, Mapping) else row) for row in rows]
        longest = max(map(len, ids))
        if any(len(r) != longest for r in ids) and self.tokenizer.pad_token_id is None:
            raise ValueError("MNTPCollator got rows of different lengths but the tokenizer has no pad token")
        input_ids = torch.full((len(ids), longest), self.tokenizer.pad_token_id or 0, dtype=torch.int64)  # (B, L)
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.int64)  # (B, L)
        left = self.tokenizer.padding_side == "left"
        for i, row in enumerate(ids):
            span = slice(longest - len(row), longest) if left else slice(0, len(row))
            input_ids[i, span] = torch.tensor(row, dtype=torch.int64)
            attention_mask[i, span] = 1
        return input_ids, attention_mask

    def mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked copy of ``input_ids (B, L)`` and its ``labels (B, L)`` (rules in the class docstring)."""
        first_real = (attention_mask.cumsum(dim=1) == 1) & (attention_mask == 1)  # (B, L) first unpadded token
        eligible = (attention_mask == 1) & ~first_real & ~torch.isin(input_ids, self.special_ids)  # (B, L)
        probabilities = torch.full(input_ids.shape, self.mask_probability)  # (B, L)
        selected = torch.bernoulli(probabilities, generator=generator).bool() & eligible  # (B, L)
        if not selected.any() and eligible.any():
            candidates = torch.nonzero(eligible.flatten()).squeeze(1)  # (E,)
            pick = candidates[torch.randint(len(candidates), (1,), generator=generator)]
            selected.view(-1)[pick] = True
        labels = torch.where(selected, input_ids, IGNORE_INDEX)  # (B, L)
        masked = input_ids.clone()
        if self.strategy == "all_mask":
            masked[selected] = self.mask_token_id
            return masked, labels
        draw = torch.rand(input_ids.shape, generator=generator)  # (B, L) 80% mask, 10% random, 10% unchanged
        masked[selected & (draw < 0.8)] = self.mask_token_id
        to_random = selected & (draw >= 0.8) & (draw < 0.9)  # (B, L)
        picks = torch.randint(len(self.random_candidates), input_ids.shape, generator=generator)  # (B, L)
        masked[to_random] = self.random_candidates[picks][to_random]
        return masked, labels

    def __call__(self, rows: Sequence[Mapping[str, Any] | Sequence[int]]) -> MNTPBatch:
        if not rows:
            raise ValueError("MNTPCollator got an empty list of rows")
        input_ids, attention_mask = self._pad(rows)  # (B, L), (B, L)
        masked, labels = self.mask(input_ids, attention_mask, self._generator(input_ids))
        return MNTPBatch(input_ids=masked, attention_mask=attention_mask, labels=labels)
