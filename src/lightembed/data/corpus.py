"""Unlabeled text for masked next-token prediction (MNTP) and unsupervised SimCSE.

A corpus is one source (see :mod:`lightembed.data.sources`): a local ``.txt`` file with one text per line, a
``.jsonl``/``.csv``/``.parquet`` file with a text column, a Hub dataset such as ``wikitext:wikitext-103-raw-v1``, or
one file of a Hub repo (``hf://datasets/princeton-nlp/datasets-for-simcse/wiki1m_for_simcse.txt``). With
``streaming: true`` it is read lazily (:mod:`.article_stream`: Wikipedia-sized). Texts are cleaned by ``format``:

- ``"lines"``: each line/row is stripped; blank rows are dropped.
- ``"wikitext"``: raw WikiText as well: heading lines (`` = Title = ``, `` = = Section = = `` ...) are dropped too.
  The ``<unk>`` placeholders of WikiText are kept as they are; how they tokenize depends on the tokenizer (pieces of
  ``<``, ``unk``, ``>`` for BERT; the tokenizer's own unknown token where ``<unk>`` is a special token, as for
  Llama, and special tokens are never masked by MNTP).

The ``objective`` decides how cleaned texts become training examples and batches:

========= ================================================= ==========================================================
objective training example                                  batch (see the collators in :mod:`.collators`)
========= ================================================= ==========================================================
simcse    one cleaned line/row, or its sentences (option     ``{"text": {"input_ids", "attention_mask"[,
          ``sentence_chars``), truncated by the collator     "token_type_ids"]}: (B, L), "text_ids": (B,)}``
mntp      a block of exactly ``max_length`` tokens           ``{"input_ids", "attention_mask", "labels"}: (B,
          ("chunks", :func:`chunk_corpus`)                   max_length)``, masked by :class:`.MNTPCollator`
========= ================================================= ==========================================================

Validation loaders, in this order (:attr:`CorpusDataModule.val_names` names them):

1. index 0, named ``"text"`` (:data:`TEXT_VAL_NAME`), only when ``val`` is set: held-out text prepared like the
   training text, in the same batch format. MNTP masks it reproducibly (the same batch is masked the same way in
   every epoch and run with the same ``seed``).
2. then one loader per ``sts_val`` entry, in dict order: STS pairs in the batch format of
   :class:`~lightembed.data.pairs.PairDataModule` (``anchor``, ``positive``, ``score`` ...).

Tokenized and chunked corpora are cached by ``datasets`` (``Dataset.map`` fingerprints): a second run with the same
source, tokenizer and ``max_length`` reads the blocks from the cache instead of tokenizing again.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import datasets
from lightning import LightningDataModule
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lightembed.backbones import load_tokenizer
from lightembed.data.article_stream import (
    ArticleStream,
    distributed_position,
    is_hub_file,
    open_rows,
    read_hub_file,
    special_tokens_around,
    split_sentences,
)
from lightembed.data.collators import MNTPCollator, SentenceCollator
from lightembed.data.formats import STS_SCORE_RANGE
from lightembed.data.samplers import EpochRandomSampler
from lightembed.data.sources import load_source, resolve_source
from lightembed.data.sts_sets import STSSets

log = logging.getLogger(__name__)

TextFormat = Literal["lines", "wikitext"]
Objective = Literal["simcse", "mntp"]

TEXT_VAL_NAME = "text"
"""Name of the held-out text validation loader in :attr:`CorpusDataModule.val_names` (always index 0)."""

_HEADING = re.compile(r"(?P<open>(?:= )+)\S.*?(?P<close>(?: =)+)")


def is_wikitext_heading(line: str) -> bool:
    """Whether ``line`` is a raw WikiText heading: `` = Title = ``, `` = = Section = = `` (balanced ``=`` marks)."""
    match = _HEADING.fullmatch(line.strip())
    return match is not None and len(match["open"]) == len(match["close"])


def clean_lines(lines: Iterable[str | None], format: TextFormat = "lines") -> list[str]:
    """Strip each line and drop blank ones (and missing values); ``format="wikitext"`` also drops headings.

    ``<unk>`` and WikiText's ``@-@``-style escapes are kept unchanged.
    """
    if format not in ("lines", "wikitext"):
        raise ValueError(f"format must be 'lines' or 'wikitext', got {format!r}")
    cleaned = []
    for line in lines:
        if line is None:
            continue
        text = line.strip()
        if text and not (format == "wikitext" and is_wikitext_heading(text)):
            cleaned.append(text)
    return cleaned


def read_wikitext_lines(path: str | Path) -> list[str]:
    """The paragraphs of a raw WikiText file (UTF-8): stripped lines without headings and blank lines.

    Raises:
        ValueError: the file holds no paragraph (empty, blank, or headings only); the message names the file.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        lines = clean_lines(handle, "wikitext")
    if not lines:
        raise ValueError(f"{path}: no text in this WikiText file (it is empty or holds only headings/blank lines)")
    return lines


def row_texts(text: str | None, format: TextFormat, sentence_chars: tuple[int, int] | None) -> list[str]:
    """The training texts of one row: the cleaned row (none if blank or a heading), or, with ``sentence_chars``
    ``(min, max)``, its sentences of ``min`` to ``max`` characters (:func:`.article_stream.split_sentences`) taken
    from its cleaned lines."""
    if sentence_chars is None:
        return clean_lines([text], format)
    return split_sentences(clean_lines((text or "").splitlines(), format), *sentence_chars)


def _clean_batch(
    batch: dict[str, list], column: str, format: TextFormat, sentence_chars: tuple[int, int] | None
) -> dict[str, list[str]]:
    return {"text": [t for text in batch[column] for t in row_texts(text, format, sentence_chars)]}


def _tokenize_batch(batch: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[list[int]]]:
    encoded = tokenizer(batch["text"], add_special_tokens=False, verbose=False)
    return {"input_ids": encoded["input_ids"]}


def _group_batch(batch: dict[str, list], prefix: list[int], suffix: list[int], body: int) -> dict[str, list[list[int]]]:
    stream = list(itertools.chain.from_iterable(batch["input_ids"]))
    usable = len(stream) // body * body  # the last partial block of each map batch is dropped
    return {"input_ids": [prefix + stream[i : i + body] + suffix for i in range(0, usable, body)]}


def chunk_corpus(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> datasets.Dataset:
    """Cut the texts of ``ds`` (column ``text``) into blocks of exactly ``max_length`` token ids (column
    ``input_ids``), as Hugging Face's ``run_mlm.py`` ``group_texts`` does.

    Texts are tokenized without special tokens and concatenated in order; the stream is cut into bodies of
    ``max_length - len(prefix) - len(suffix)`` tokens and each body is framed by the special tokens the tokenizer
    puts around one text (:func:`special_tokens_around`: ``[BOS] body`` for Llama-like tokenizers, ``[CLS] body
    [SEP]`` for BERT, the bare body for GPT-2), so every block starts as the model's inputs normally do. Texts are
    processed 1,000 at a time and the last partial block of each 1,000 is dropped (as in ``run_mlm.py``). Both steps
    are ``Dataset.map`` calls and are cached by ``datasets``.
    """
    prefix, suffix = special_tokens_around(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for text next to the {len(prefix) + len(suffix)} special "
            "token(s) of each block; raise max_length"
        )
    tokens = ds.map(
        _tokenize_batch,
        batched=True,
        remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tokenizer},
        desc="Tokenizing corpus",
    )
    return tokens.map(
        _group_batch,
        batched=True,
        remove_columns=tokens.column_names,
        fn_kwargs={"prefix": prefix, "suffix": suffix, "body": body},
        desc=f"Grouping into blocks of {max_length}",
    )


class CorpusDataModule(LightningDataModule):
    """Unlabeled text for MNTP or unsupervised SimCSE, with optional held-out text and STS validation sets.

    The objective, batch formats and validation loader order are described in the module docstring of
    :mod:`lightembed.data.corpus`.

    Args:
        train: training corpus: a local ``.txt`` (one text per line), ``.jsonl``/``.csv``/``.parquet`` with a
            ``text_column``, a glob or directory, a Hub id ``owner/name[:config]`` (``wikitext:wikitext-103-raw-v1``,
            ``wikimedia/wikipedia:20231101.en``), or one file of a Hub dataset repo
            (``hf://datasets/princeton-nlp/datasets-for-simcse/wiki1m_for_simcse.txt``).
        objective: ``"simcse"``: one example per line/row, batches ``{"text", "text_ids"}``; ``"mntp"``: blocks of
            ``max_length`` tokens masked by :class:`~lightembed.data.collators.MNTPCollator`.
        format: how texts are cleaned: ``"lines"`` strips and drops blank rows, ``"wikitext"`` also drops raw
            WikiText headings. Applies to ``train`` and ``val``.
        text_column: the column holding the text (a ``.txt`` file's lines are column ``text``).
        val: held-out text, same kind of source and format as ``train``; the validation loader ``"text"`` (index 0).
        sts_val: STS sets (``sentence1``, ``sentence2``, ``score``) for validation, name -> source, after ``val``.
        train_split: split read from a Hub id or a per-split directory for ``train``.
        val_split: split read for ``val`` and ``sts_val`` sources.
        data_root: folder for relative local sources; default ``$LIGHTEMBED_DATA``.
        tokenizer: tokenizer name or path, as for :func:`lightembed.backbones.load_tokenizer`.
        max_length: ``simcse``: longest tokenized text (longer ones are truncated); ``mntp``: tokens per block,
            special tokens included. Also the truncation length of STS texts.
        batch_size: training batch size.
        eval_batch_size: validation batch size.
        max_samples: keep only the first N training examples after cleaning (lines for ``simcse``, blocks for
            ``mntp``); None keeps all. Validation data is never cut.
        mask_probability: ``mntp``: probability that a token is selected for prediction.
        mask_strategy: ``mntp``: ``"bert"`` (80% mask / 10% random / 10% unchanged) or ``"all_mask"``.
        mask_token: ``mntp``: token to mask with; default the tokenizer's mask token, else ``"_"``.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle (fixed by seed and epoch) and of the validation masks.
        sts_score_range: inclusive bounds of the gold scores of the ``sts_val`` sets (default 0-5); a score outside
            is an error naming file and line. None accepts any finite score.
        sentence_chars: ``simcse``: ``(min, max)``: split each row into sentences (paragraphs on newlines, then
            end punctuation before a capital) and keep those of ``min`` to ``max`` characters, for article corpora
            (Wikipedia); None keeps one example per cleaned row.
        streaming: read ``train`` lazily (:mod:`lightembed.data.article_stream`): for corpora larger than memory;
            examples are made on the fly, shuffled with buffers, split between DDP ranks and DataLoader workers.
            Needs ``trainer.max_steps``. ``val`` and ``sts_val`` are still read into memory.
        shuffle_buffer: ``streaming``: rows (and then examples) in each shuffle buffer; 0 reads in file order.
    """

    def __init__(
        self,
        train: str,
        objective: Objective = "simcse",
        format: TextFormat = "lines",
        text_column: str = "text",
        val: str | None = None,
        sts_val: dict[str, str] | None = None,
        train_split: str = "train",
        val_split: str = "validation",
        data_root: str | None = None,
        tokenizer: str = "packaged:all-MiniLM-L6-v2",
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        max_samples: int | None = None,
        mask_probability: float = 0.2,
        mask_strategy: Literal["bert", "all_mask"] = "bert",
        mask_token: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
        sts_score_range: tuple[float, float] | None = STS_SCORE_RANGE,
        sentence_chars: tuple[int, int] | None = None,
        streaming: bool = False,
        shuffle_buffer: int = 10_000,
    ) -> None:
        super().__init__()
        if objective not in ("simcse", "mntp"):
            raise ValueError(f"objective must be 'simcse' or 'mntp', got {objective!r}")
        if format not in ("lines", "wikitext"):
            raise ValueError(f"format must be 'lines' or 'wikitext', got {format!r}")
        for name, value in (
            ("max_length", max_length),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be positive or None, got {max_samples}")
        if sentence_chars is not None and (objective != "simcse" or not 1 <= sentence_chars[0] <= sentence_chars[1]):
            raise ValueError(
                f"sentence_chars must be (min, max) with 1 <= min <= max, for simcse; got {sentence_chars}"
            )
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be 0 (no shuffle) or positive, got {shuffle_buffer}")
        if streaming and max_samples is not None:
            raise ValueError("max_samples does not apply with streaming: bound the run with trainer.max_steps")
        MNTPCollator.check_options(mask_probability, mask_strategy)
        sts_val = dict(sts_val or {})
        if val is not None and TEXT_VAL_NAME in sts_val:
            raise ValueError(f"sts_val name {TEXT_VAL_NAME!r} is taken by the held-out text loader; rename it")
        self.save_hyperparameters()
        self.train_source = train
        self.objective = objective
        self.format = format
        self.text_column = text_column
        self.val_source = val
        self.sts = STSSets(
            sts_val, None, val_split, "test", data_root, val_option="sts_val", score_range=sts_score_range
        )
        self.train_split, self.val_split = train_split, val_split
        self.data_root = data_root
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_samples = max_samples
        self.mask_probability = mask_probability
        self.mask_strategy = mask_strategy
        self.mask_token = mask_token
        self.num_workers = num_workers
        self.seed = seed
        self.sentence_chars = None if sentence_chars is None else (int(sentence_chars[0]), int(sentence_chars[1]))
        self.streaming = streaming
        self.shuffle_buffer = shuffle_buffer

        self.train_dataset: datasets.Dataset | ArticleStream | None = None
        self.val_dataset: datasets.Dataset | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None

    @property
    def val_names(self) -> list[str]:
        """Names of the validation loaders in order: ``"text"`` first if ``val`` is set, then the ``sts_val`` names."""
        return ([TEXT_VAL_NAME] if self.val_source is not None else []) + self.sts.val_names

    @property
    def text_val_index(self) -> int | None:
        """Index of the held-out text loader among the validation loaders (0), or None without ``val``."""
        return 0 if self.val_source is not None else None

    @property
    def sts_val_names(self) -> list[str]:
        """Names of the STS validation loaders, which follow the text loader."""
        return self.sts.val_names

    @property
    def test_names(self) -> list[str]:
        """No test sets: a corpus stage is tested through the evaluation commands."""
        return []

    @property
    def sts_val_sources(self) -> dict[str, str]:
        return self.sts.val_sources

    @property
    def sts_val_datasets(self) -> list[datasets.Dataset] | None:
        return self.sts.val_datasets

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer named by the ``tokenizer`` option, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def _read_text(self, source: str, split: str) -> tuple[datasets.Dataset, str]:
        """Read the text column of one source into memory; returns it and the source's name for messages."""
        if is_hub_file(source):
            ds = read_hub_file(source, streaming=False)
            if self.text_column not in ds.column_names:
                raise ValueError(f"{source}: no column {self.text_column!r}; its columns are {ds.column_names}")
            return ds.select_columns([self.text_column]), source
        resolved = resolve_source(source, split, self.data_root)
        if resolved.is_local and all(f.stat().st_size == 0 for f in resolved.files):
            raise ValueError(f"{resolved.describe()} is empty")
        return load_source(source, [self.text_column], split, self.data_root, text_columns=[]), resolved.describe()

    def _load_text(self, option: str, source: str, split: str) -> datasets.Dataset:
        """Read, clean and (for MNTP) chunk one text source."""
        try:
            ds, where = self._read_text(source, split)
            dtype = getattr(ds.features[self.text_column], "dtype", None)
            if dtype not in ("string", "large_string"):
                raise ValueError(f"{where}: column {self.text_column!r} should hold text, not {dtype}")
            ds = ds.map(
                _clean_batch,
                batched=True,
                remove_columns=ds.column_names,
                fn_kwargs={"column": self.text_column, "format": self.format, "sentence_chars": self.sentence_chars},
                desc="Cleaning text",
            )
            if len(ds) == 0:
                dropped = "blank lines and headings" if self.format == "wikitext" else "blank lines"
                raise ValueError(f"{where}: no text left after dropping {dropped} (format={self.format!r})")
            if self.objective == "mntp":
                ds = chunk_corpus(ds, self.tokenizer, self.max_length)
                if len(ds) == 0:
                    raise ValueError(
                        f"{where}: too little text for one block of max_length={self.max_length} "
                        "tokens; lower max_length or give more text"
                    )
        except (ValueError, FileNotFoundError) as err:
            err.add_note(f"while loading {option}={source!r} (split {split!r}, format {self.format!r})")
            raise
        return ds

    def setup(self, stage: str | None = None) -> None:
        """Load the sources the stage needs (each once) and check the collator options against the tokenizer."""
        if stage in (None, "fit") and self.train_dataset is None and self.streaming:
            self.train_dataset = self._stream_train()
        elif stage in (None, "fit") and self.train_dataset is None:
            ds = self._load_text("train", self.train_source, self.train_split)
            if self.max_samples is not None and self.max_samples < len(ds):
                ds = ds.select(range(self.max_samples))
            self.train_dataset = ds
        if stage in (None, "fit", "validate"):
            if self.val_dataset is None and self.val_source is not None:
                self.val_dataset = self._load_text("val", self.val_source, self.val_split)
            self.sts.setup("validate")
        self._collator(seed=None)  # fail at setup, not at the first batch, on a bad mask token

    def _stream_train(self) -> ArticleStream:
        trainer = self.trainer
        if trainer is not None and trainer.max_steps == -1 and not isinstance(trainer.limit_train_batches, int):
            raise ValueError("streaming: the number of training batches is unknown; set trainer.max_steps")
        try:
            rows = open_rows(self.train_source, self.text_column, self.train_split, self.data_root)
        except (ValueError, FileNotFoundError) as err:
            err.add_note(f"while streaming train={self.train_source!r} (split {self.train_split!r})")
            raise
        rank, world_size = distributed_position(trainer)
        clean = functools.partial(row_texts, format=self.format, sentence_chars=self.sentence_chars)
        tokenizer = self.tokenizer if self.objective == "mntp" else None
        return ArticleStream(
            rows, self.text_column, self.objective, clean, tokenizer, self.max_length, self.seed, self.shuffle_buffer,
            rank, world_size,
        )  # fmt: skip

    def _collator(self, seed: int | None) -> Any:
        if self.objective == "simcse":
            return SentenceCollator(self.tokenizer, self.max_length)
        return MNTPCollator(self.tokenizer, self.mask_probability, self.mask_strategy, self.mask_token, seed=seed)

    def _workers(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') before asking for the training data")
        ds = self.train_dataset
        if isinstance(ds, ArticleStream):  # ordered, shuffled and shared between ranks by the stream itself
            return DataLoader(ds, batch_size=self.batch_size, collate_fn=self._collator(seed=None), **self._workers())
        sampler = EpochRandomSampler(len(ds), self.seed)
        return DataLoader(
            ds, batch_size=self.batch_size, sampler=sampler, collate_fn=self._collator(seed=None), **self._workers()
        )

    def val_dataloader(self) -> list[DataLoader]:
        """The validation loaders in :attr:`val_names` order: held-out text (if ``val``), then the STS sets."""
        if self.sts.val_datasets is None:
            raise RuntimeError("call setup('fit') or setup('validate') before asking for the validation data")
        loaders = []
        if self.val_dataset is not None:
            collate = self._collator(seed=self.seed)
            loaders.append(
                DataLoader(self.val_dataset, batch_size=self.eval_batch_size, collate_fn=collate, **self._workers())
            )
        sts = self.sts.loaders("validation", self.tokenizer, self.max_length, self.eval_batch_size, self.num_workers)
        return loaders + sts
