"""Named STS sets for validation and test: the part every lightembed data module shares.

Each set is an STS source (``sentence1``, ``sentence2``, ``score``; :func:`~lightembed.data.formats.load_sts`) named
in a dict; its loader comes in dict order and yields :class:`~lightembed.data.batches.PairBatch` with a ``score``, so
a stage can log ``val/<name>_spearman``. Data modules hold one :class:`STSSets` (composition) and answer
:class:`~lightembed.data.batches.EvaluationSets` from it.
"""

from __future__ import annotations

from collections.abc import Mapping

import datasets
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lightembed.backbones import load_tokenizer
from lightembed.data.collators import PairCollator
from lightembed.data.formats import STS_SCORE_RANGE, load_sts
from lightembed.data.sources import OnBadRow


class STSSets:
    """Validation and test STS sets, each loaded once.

    Args:
        val: name -> source of the validation sets, in loader order.
        test: name -> source of the test sets, in loader order.
        val_split: split read for ``val`` sources.
        test_split: split read for ``test`` sources.
        data_root: folder for relative local sources.
        on_bad_row: ``"error"`` or ``"skip"`` (see :func:`~lightembed.data.sources.load_source`).
        val_option: the data-module option ``val`` comes from, for messages (``sts_val`` in the corpus module).
        score_range: inclusive bounds of the gold scores; a score outside is a bad row (None: any finite score).
    """

    def __init__(
        self,
        val: Mapping[str, str] | None,
        test: Mapping[str, str] | None,
        val_split: str,
        test_split: str,
        data_root: str | None,
        on_bad_row: OnBadRow = "error",
        val_option: str = "val",
        score_range: tuple[float, float] | None = STS_SCORE_RANGE,
    ) -> None:
        self.val_sources = dict(val or {})
        self.test_sources = dict(test or {})
        self.val_split, self.test_split = val_split, test_split
        self.data_root = data_root
        self.on_bad_row = on_bad_row
        self.val_option = val_option
        self.score_range = score_range
        self.val_datasets: list[datasets.Dataset] | None = None
        self.test_datasets: list[datasets.Dataset] | None = None

    @property
    def val_names(self) -> list[str]:
        return list(self.val_sources)

    @property
    def test_names(self) -> list[str]:
        return list(self.test_sources)

    def _load(self, option: str, sources: dict[str, str], split: str) -> list[datasets.Dataset]:
        loaded = []
        for name, source in sources.items():
            try:
                loaded.append(load_sts(source, split, self.data_root, self.on_bad_row, self.score_range))
            except (ValueError, FileNotFoundError) as err:
                err.add_note(f"while loading {option}[{name!r}] = {source!r} (split {split!r})")
                raise
        return loaded

    def setup(self, stage: str | None) -> None:
        """Load the sets the stage needs (``fit``/``validate``: validation; ``test``: test), each once."""
        if stage in (None, "fit", "validate") and self.val_datasets is None:
            self.val_datasets = self._load(self.val_option, self.val_sources, self.val_split)
        if stage in (None, "test") and self.test_datasets is None:
            self.test_datasets = self._load("test", self.test_sources, self.test_split)

    def loaders(
        self,
        which: str,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        batch_size: int,
        num_workers: int = 0,
        instruction: str | None = None,
    ) -> list[DataLoader]:
        """One loader per ``which`` (``"validation"`` or ``"test"``) set, in name order; ``instruction`` is prefixed to
        both sentences and excluded from pooling."""
        sets = self.val_datasets if which == "validation" else self.test_datasets
        if sets is None:
            raise RuntimeError(f"call setup() before asking for the {which} data")
        instructions = {"anchor": instruction, "positive": instruction} if instruction else {}
        collate = PairCollator(tokenizer, max_length, instructions)
        workers = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
        return [DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate, **workers) for ds in sets]


class STSEvaluation:
    """What a data module whose validation and test loaders are all STS sets answers from its :class:`STSSets`:
    the names and sources of its sets (:class:`~lightembed.data.batches.EvaluationSets`), its tokenizer and the
    validation/test loaders. A mixin of :class:`~lightembed.data.PairDataModule` and
    :class:`~lightembed.data.MultiDatasetDataModule`; they set ``sts``, ``tokenizer_name``, ``max_length``,
    ``eval_batch_size``, ``num_workers`` and ``eval_instruction``.
    """

    sts: STSSets
    tokenizer_name: str
    max_length: int
    eval_batch_size: int
    num_workers: int
    eval_instruction: str | None
    _tokenizer: PreTrainedTokenizerBase | None

    @property
    def val_sources(self) -> dict[str, str]:
        return self.sts.val_sources

    @property
    def test_sources(self) -> dict[str, str]:
        return self.sts.test_sources

    @property
    def val_datasets(self) -> list[datasets.Dataset] | None:
        return self.sts.val_datasets

    @property
    def test_datasets(self) -> list[datasets.Dataset] | None:
        return self.sts.test_datasets

    @property
    def val_names(self) -> list[str]:
        """Names of the validation sets, in dataloader order (all of them are STS sets)."""
        return self.sts.val_names

    @property
    def sts_val_names(self) -> list[str]:
        """Names of the STS validation sets: all of :attr:`val_names`."""
        return self.sts.val_names

    @property
    def test_names(self) -> list[str]:
        """Names of the test sets, in dataloader order."""
        return self.sts.test_names

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer named by the ``tokenizer`` option, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def val_dataloader(self) -> list[DataLoader]:
        return self.sts.loaders(
            "validation", self.tokenizer, self.max_length, self.eval_batch_size, self.num_workers, self.eval_instruction
        )

    def test_dataloader(self) -> list[DataLoader]:
        return self.sts.loaders(
            "test", self.tokenizer, self.max_length, self.eval_batch_size, self.num_workers, self.eval_instruction
        )
