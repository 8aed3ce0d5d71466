"""Streamed corpora too large for memory (Wikipedia): articles read lazily, turned into sentences or token blocks.

The layout of ``wikimedia/wikipedia`` on the Hub is parquet shards ``<config>/train-0000X-of-0000N.parquet`` with the
columns ``id``, ``url``, ``title``, ``text`` (one article per row). A local folder or glob of such shards, a Hub id
(``wikimedia/wikipedia:20231101.en``), or one file of a Hub dataset repository
(``hf://datasets/princeton-nlp/datasets-for-simcse/wiki1m_for_simcse.txt``, :func:`is_hub_file`) is read with
``datasets`` streaming: rows are read shard by shard, never all at once.

:class:`ArticleStream` turns the rows into training examples on the fly:

- ``simcse``: each row is split into sentences (:func:`split_sentences`): ``{"text": sentence}``, or, without
  ``sentence_chars``, one example per cleaned row (a one-sentence-per-line file such as SimCSE's ``wiki1m``).
- ``mntp``: rows are tokenized without special tokens and concatenated, a separator token (EOS, else SEP) after
  each row so a block shows where an article ends; the stream is cut into bodies and framed by the special tokens
  the tokenizer puts around one text (:func:`special_tokens_around`), so every block holds
  exactly ``max_length`` ids and no padding (``{"input_ids": [...]}``). The tokens after the last full block of an
  epoch are dropped.

Order and sharing, for an epoch ``e`` (advanced at each new iteration, or set with :meth:`ArticleStream.set_epoch`):

1. the rows are shuffled by ``datasets`` (``IterableDataset.shuffle``: the shard order, then a buffer of
   ``shuffle_buffer`` rows), seeded by ``(seed, e)``;
2. split between DDP ranks by ``datasets.distributed.split_dataset_by_node`` (whole shards when their number is a
   multiple of the world size, else every ``world_size``-th row), and between DataLoader workers by ``datasets``
   itself (whole shards; workers beyond the number of shards get none): no row is read twice in an epoch;
3. the examples (sentences or blocks) are shuffled again with a buffer of ``shuffle_buffer`` examples and a numpy
   generator seeded by ``(seed, e, rank, worker)``, so a batch does not hold the sentences of one article.

The same seed gives the same examples in the same order; ranks may get different numbers of examples, so a streamed
run sets ``trainer.max_steps`` (below one epoch under DDP).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from lightembed.data.sources import BUILDERS, ResolvedSource, resolve_source, stream_source

HUB_FILE_PREFIX = "hf://datasets/"
"""Prefix of a source naming one file of a Hub dataset repository (the ``datasets``/``huggingface_hub`` URL form)."""

T = TypeVar("T")

# A sentence ends at '.', '!' or '?' (closing quotes/brackets kept with it) followed by whitespace and a capital.
# Why a regular expression: it is deterministic, needs no model or download (nltk's punkt needs its data fetched,
# and is not installed), and costs little per article. Its known misses are abbreviations before a capital
# ("Dr. Smith", "U.S. Army" split) and sentences starting with a digit or lowercase letter (not split); for
# contrastive training a rare wrong cut gives one short and one long sentence, which the length bounds filter.
_SENTENCE_END = re.compile(r"([.!?][\"'\u201d\u2019)\]]*)\s+(?=[A-Z\u00c0-\u00de])")


def split_sentences(paragraphs: Iterable[str], min_chars: int, max_chars: int) -> list[str]:
    """The sentences of ``paragraphs`` (cleaned lines of text) whose length in characters is in
    ``[min_chars, max_chars]``: each paragraph is cut after end punctuation followed by whitespace and a capital."""
    sentences = []
    for paragraph in paragraphs:
        for sentence in _SENTENCE_END.sub("\\1\n", paragraph).split("\n"):
            sentence = sentence.strip()
            if min_chars <= len(sentence) <= max_chars:
                sentences.append(sentence)
    return sentences


def special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special token ids a tokenizer puts before and after a single text: ``([CLS], [SEP])`` for BERT,
    ``([BOS], [])`` for Llama, ``([], [])`` for GPT-2."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    raise ValueError(f"cannot locate the text between the special tokens of {type(tokenizer).__name__}: {full}")


def separator_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The token put after each row of a packed MNTP stream: EOS (decoders), else SEP (BERT), else none."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return int(token_id)
    return None


def pack_blocks(
    rows: Iterable[list[int]], prefix: list[int], suffix: list[int], separator: int | None, max_length: int
) -> Iterator[list[int]]:
    """Blocks of exactly ``max_length`` ids: ``prefix + body + suffix``, the bodies cut from the concatenation of
    ``rows``, each row followed by ``separator`` (if any). The ids after the last full body are dropped."""
    body = max_length - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"max_length={max_length} leaves no room for text next to the special tokens; raise it")
    tail = [] if separator is None else [separator]
    buffer: list[int] = []
    for ids in rows:
        buffer.extend(ids)
        buffer.extend(tail)
        start = 0
        while len(buffer) - start >= body:
            yield prefix + buffer[start : start + body] + suffix
            start += body
        del buffer[:start]


def shuffled(items: Iterable[T], buffer_size: int, rng: np.random.Generator) -> Iterator[T]:
    """``items`` in a random order drawn with a buffer of ``buffer_size`` (the scheme of ``datasets``' shuffle)."""
    buffer: list[T] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = int(rng.integers(buffer_size))
        yield buffer[index]
        buffer[index] = item
    yield from (buffer[i] for i in rng.permutation(len(buffer)))


def is_hub_file(source: str) -> bool:
    """Whether ``source`` names one file of a Hub dataset repo: ``hf://datasets/owner/name[@revision]/path.ext``."""
    return source.startswith(HUB_FILE_PREFIX)


def read_hub_file(source: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    """Read one file of a Hub dataset repo with the builder of its extension (the repo may mix formats: SimCSE's
    ``datasets-for-simcse`` holds a ``.txt``, a ``.csv`` and a ``.tar``, so the repo id alone does not say which)."""
    builder = BUILDERS.get(Path(source).suffix.lower())
    if builder is None or source.count("/") < 5:
        raise ValueError(
            f"data source {source!r}: a Hub file is hf://datasets/owner/name/path with one of the extensions "
            f"{sorted(BUILDERS)}"
        )
    return datasets.load_dataset(builder, data_files=[source], split="train", streaming=streaming)


def check_text_column(resolved: ResolvedSource, column: str) -> None:
    """Fail on the first local parquet shard without a text column ``column``, naming the file (the schema is read,
    not the rows); other sources are checked on their first row by :func:`open_rows`."""
    for path in resolved.files if resolved.builder == "parquet" else ():
        schema = pq.read_schema(path)
        if column not in schema.names:
            raise ValueError(f"{path}: no column {column!r} (option text_column); its columns are {schema.names}")
        kind = str(schema.field(column).type)
        if kind not in ("string", "large_string"):
            raise ValueError(f"{path}: column {column!r} (option text_column) should hold text, not {kind}")


def open_rows(source: str, column: str, split: str, data_root: str | None) -> datasets.IterableDataset:
    """The rows of ``source`` streamed, only the column ``column``; a missing column is an error naming the file."""
    if is_hub_file(source):
        ds = read_hub_file(source, streaming=True)
        first = next(iter(ds.take(1)), None)
        if first is None or column not in first:
            found = [] if first is None else list(first)
            raise ValueError(f"{source}: no column {column!r} (option text_column); its columns are {found}")
    else:
        resolved = resolve_source(source, split, data_root)
        check_text_column(resolved, column)
        ds = stream_source(source, [column], split, data_root, text_columns=())
    return ds.select_columns([column])


class ArticleStream(IterableDataset):
    """Training examples made on the fly from a streamed corpus (see the module docstring for order and sharing).

    Args:
        rows: the streamed rows, with the text in ``column``.
        column: the text column.
        objective: ``"simcse"`` (rows ``{"text": str}``) or ``"mntp"`` (rows ``{"input_ids": list[int]}``).
        clean: ``text -> list of texts`` applied to each row: sentences, or the cleaned row itself (or nothing).
        tokenizer: ``mntp``: the tokenizer; its special tokens frame the blocks and give the separator.
        max_length: ``mntp``: ids per block, special tokens included.
        seed: base seed of both shuffles.
        shuffle_buffer: rows in the row buffer and examples in the example buffer (0: read in file order).
        rank, world_size: this DDP rank and the number of ranks.
    """

    def __init__(
        self,
        rows: datasets.IterableDataset,
        column: str,
        objective: Literal["simcse", "mntp"],
        clean: Callable[[str], list[str]],
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_length: int = 128,
        seed: int = 0,
        shuffle_buffer: int = 10_000,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if objective == "mntp" and tokenizer is None:
            raise ValueError("ArticleStream with objective 'mntp' needs a tokenizer")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.rows, self.column, self.objective, self.clean = rows, column, objective, clean
        self.tokenizer, self.max_length = tokenizer, max_length
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration (each iteration then moves on to the next epoch)."""
        self.epoch = epoch

    def _rows(self, epoch: int) -> datasets.IterableDataset:
        from datasets.distributed import split_dataset_by_node

        ds = self.rows
        if self.shuffle_buffer:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            ds.set_epoch(epoch)
        if self.world_size > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        return ds

    def _texts(self, epoch: int) -> Iterator[str]:
        # inside a DataLoader worker, iterating a datasets IterableDataset reads only this worker's shards
        for row in self._rows(epoch):
            yield from self.clean(row[self.column] or "")

    def _blocks(self, texts: Iterator[str]) -> Iterator[dict[str, Any]]:
        tokenizer = self.tokenizer
        assert tokenizer is not None
        prefix, suffix = special_tokens_around(tokenizer)

        def token_rows() -> Iterator[list[int]]:
            while chunk := list(itertools.islice(texts, 64)):  # a batched call is several times faster than one by one
                yield from tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]

        for block in pack_blocks(token_rows(), prefix, suffix, separator_id(tokenizer), self.max_length):
            yield {"input_ids": block}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch
        self.epoch += 1  # Lightning sets no epoch on an iterable dataset: each iteration is the next epoch
        worker = get_worker_info()
        texts = self._texts(epoch)
        examples = self._blocks(texts) if self.objective == "mntp" else ({"text": t} for t in texts)
        if not self.shuffle_buffer:
            return examples
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker.id if worker is not None else 0])
        return shuffled(examples, self.shuffle_buffer, rng)


def distributed_position(trainer: Any) -> tuple[int, int]:
    """``(rank, world_size)`` of this process: from the Lightning trainer if attached, else ``torch.distributed``."""
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
