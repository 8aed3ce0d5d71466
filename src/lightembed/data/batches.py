"""The contracts between data modules and stages: one type per batch shape, and what a stage may ask of its data.

Collators build these dicts and stages read them; a field's meaning is defined here once. Every tensor is on the
batch's device; ``B`` is the batch size and ``L`` the padded length of that field.
"""

from __future__ import annotations

from typing import Protocol, TypedDict, runtime_checkable

from torch import Tensor


class Features(TypedDict, total=False):
    """One tokenised text field: what a backbone reads and pooling needs."""

    input_ids: Tensor  # (B, L) int64
    attention_mask: Tensor  # (B, L) int64, 1 on real tokens
    token_type_ids: Tensor  # (B, L) int64, BERT-style models only
    pool_mask: Tensor  # (B, L) the attention mask with an instruction's tokens zeroed (pooling skips them)


class PairBatch(TypedDict, total=False):
    """Pairs or triplets (``PairCollator``): supervised contrastive training and STS validation/test.

    ``anchor`` is always present and ``positive`` too except in (text, class) batches (``labelled_texts``: ``anchor``
    and ``label`` only); ``negative`` for triplets, ``score`` for scored pairs (STS), ``label`` for labelled pairs
    and texts. ``<field>_ids`` are stable hashes of each text's normalised form: equal ids mean
    the same text, so a loss can tell a duplicate from a true negative (also across DDP ranks).
    """

    anchor: Features
    positive: Features
    negative: Features
    score: Tensor  # (B,) float32
    label: Tensor  # (B,) int64
    anchor_ids: Tensor  # (B,) int64
    positive_ids: Tensor  # (B,) int64
    negative_ids: Tensor  # (B,) int64


class SentenceBatch(TypedDict):
    """Single sentences (``SentenceCollator``): unsupervised SimCSE and token deletion."""

    text: Features
    text_ids: Tensor  # (B,) int64, equal ids = same text


class MNTPBatch(TypedDict):
    """Masked token blocks (``MNTPCollator``): masked next-token prediction."""

    input_ids: Tensor  # (B, L) int64, masked
    attention_mask: Tensor  # (B, L) int64
    labels: Tensor  # (B, L) int64: the original id at masked positions, -100 elsewhere


@runtime_checkable
class EvaluationSets(Protocol):
    """What a stage may ask of its data module: the names of its validation and test loaders, and its batch size.

    Validation loaders come in the order of ``val_names``; the STS sets among them (scored pairs, read as
    :class:`PairBatch`) are ``sts_val_names`` and come last, after any other held-out loader (e.g. held-out text
    for MNTP). Test loaders are STS sets named by ``test_names``.
    """

    batch_size: int

    @property
    def val_names(self) -> list[str]: ...

    @property
    def sts_val_names(self) -> list[str]: ...

    @property
    def test_names(self) -> list[str]: ...


def evaluation_sets(datamodule: object) -> EvaluationSets:
    """``datamodule`` checked against :class:`EvaluationSets`, with an error naming it and what it lacks."""
    wanted = ("batch_size", "val_names", "sts_val_names", "test_names")
    missing = [name for name in wanted if not hasattr(datamodule, name)]
    if missing:
        raise TypeError(
            f"data module {type(datamodule).__name__} does not declare {missing}: a lightembed stage reads the "
            "names of its validation/test sets from it (see lightembed.data.batches.EvaluationSets)"
        )
    return datamodule  # type: ignore[return-value]
