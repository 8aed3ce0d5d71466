"""Data module of texts to embed: the input of ``lightembed predict``.

One source (a local file/glob/directory or a Hub id, read by :mod:`lightembed.data.sources`) with a text column and
optionally an id column. Batches hold the tokenised texts and each row's position in the source, so a prediction
writer (:class:`lightembed.callbacks.PredictionWriter`) puts the embeddings back in source order.
"""

from __future__ import annotations

from typing import Any

import datasets
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lightembed.backbones import load_tokenizer
from lightembed.data.collators import PairCollator
from lightembed.data.sources import OnBadRow, load_source


class TextDataModule(LightningDataModule):
    """Texts to embed with ``lightembed predict`` (no training, validation or test sets).

    Args:
        source: local file/glob/directory (relative to the data root) or Hub id ``owner/name[:config]``.
        text_column: the column holding the texts.
        id_column: a column identifying each row, written beside the embeddings (``None``: none).
        instruction: prefixed to every text and excluded from pooling, as ``Encoder.encode(instruction=...)``.
        split: split read from a Hub id or a per-split directory.
        data_root: folder for relative local sources; default ``$LIGHTEMBED_DATA``.
        tokenizer: tokenizer name or path (linked to the stage's backbone by ``lightembed predict``).
        max_length: longest tokenized text; longer ones are truncated (linked to the stage's ``max_length``).
        batch_size: texts embedded at once.
        num_workers: DataLoader worker processes.
        on_bad_row: ``"error"`` stops on an empty or missing text, naming file and row; ``"skip"`` drops such rows.
    """

    def __init__(
        self,
        source: str,
        text_column: str = "text",
        id_column: str | None = None,
        instruction: str | None = None,
        split: str = "train",
        data_root: str | None = None,
        tokenizer: str = "packaged:all-MiniLM-L6-v2",
        max_length: int = 128,
        batch_size: int = 64,
        num_workers: int = 0,
        on_bad_row: OnBadRow = "error",
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.source, self.text_column, self.id_column = source, text_column, id_column
        self.instruction = instruction
        self.split, self.data_root, self.on_bad_row = split, data_root, on_bad_row
        self.tokenizer_name, self.max_length = tokenizer, max_length
        self.batch_size, self.num_workers = batch_size, num_workers
        self.dataset: datasets.Dataset | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None

    # What a stage may ask of its data module (lightembed.data.batches.EvaluationSets): nothing to validate or test.
    @property
    def val_names(self) -> list[str]:
        return []

    @property
    def sts_val_names(self) -> list[str]:
        return []

    @property
    def test_names(self) -> list[str]:
        return []

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        columns = [self.text_column] + ([self.id_column] if self.id_column else [])
        self.dataset = load_source(
            self.source,
            columns,
            self.split,
            self.data_root,
            text_columns=[self.text_column],
            on_bad_row=self.on_bad_row,
        )

    def rows(self) -> dict[str, list[Any]]:
        """The source's rows in order: ``{"id": [...], "text": [...]}`` (``id`` only with an ``id_column``)."""
        self.setup()
        rows = {"text": list(self.dataset[self.text_column])}
        if self.id_column:
            rows = {"id": list(self.dataset[self.id_column]), **rows}
        return rows

    def predict_dataloader(self) -> DataLoader:
        self.setup()
        texts = list(self.dataset[self.text_column])  # a list: indexing a datasets Column decodes Arrow each time
        collator = PairCollator(self.tokenizer, self.max_length)

        def collate(indices: list[int]) -> dict[str, Any]:
            return {
                "text": collator.encode_texts([texts[i] for i in indices], self.instruction),
                "row": torch.tensor(indices),  # (B,) positions in the source
            }

        # rows longest first, so each batch pads little; the writer puts the embeddings back in source order
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        return DataLoader(order, batch_size=self.batch_size, collate_fn=collate, num_workers=self.num_workers)
