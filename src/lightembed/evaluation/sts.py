"""STS evaluation: cosine similarity of sentence pairs against gold scores, Spearman and Pearson (x100).

The 7-task "all" setting of SimCSE/AnglE (STS12-16, STS-B, SICK-R; each year's subsets concatenated, one Spearman per
task, then the mean) is :data:`STS_ALL`: ``--sts all`` uses a local ``sts/<task>/test.jsonl`` under the data root when
one exists and the MTEB Hub copy of the task otherwise (those are already concatenated per year).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePath

import torch
import torch.nn.functional as F
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

from lightembed.data.formats import STS_SCORE_RANGE, load_sts
from lightembed.data.sources import resolve_data_root, resolve_source
from lightembed.encoder import TextEncoder
from lightembed.evaluation.encoding import Embedder, EncodeCache

STS_ALL: dict[str, tuple[tuple[str, ...], str]] = {
    "sts12": (("sts/sts12/test.jsonl",), "mteb/sts12-sts"),
    "sts13": (("sts/sts13/test.jsonl",), "mteb/sts13-sts"),
    "sts14": (("sts/sts14/test.jsonl",), "mteb/sts14-sts"),
    "sts15": (("sts/sts15/test.jsonl",), "mteb/sts15-sts"),
    "sts16": (("sts/sts16/test.jsonl",), "mteb/sts16-sts"),
    "stsb": (("sts/stsb/test.jsonl",), "mteb/stsbenchmark-sts"),
    "sickr": (("sts/sickr/test.jsonl", "sts/sick/test.jsonl"), "mteb/sickr-sts"),
}
"""The 7 STS tasks of the "all" setting: name -> (local test files looked for under the data root, Hub id)."""


def sts_all_sources(data_root: str | None = None) -> dict[str, str]:
    """``{name: source}`` for the 7-task "all" setting: a local test file under the data root, else the Hub id."""
    root = resolve_data_root(data_root)
    sources = {}
    for name, (local_paths, hub_id) in STS_ALL.items():
        local = next((p for p in local_paths if root is not None and (root / p).is_file()), None)
        sources[name] = local or hub_id
    return sources


@dataclass(frozen=True)
class STSResult:
    """One STS set's scores: Spearman and Pearson correlation of cosine similarity with gold scores, x100."""

    name: str
    source: str
    spearman: float
    pearson: float
    pairs: int

    def to_dict(self) -> dict:
        return asdict(self)


def sts_name(source: str, split: str = "test") -> str:
    """A short name for an STS source.

    ``sts/stsb/test.jsonl`` -> ``stsb_test``; the Hub id ``mteb/sickr-sts`` with split ``test`` -> ``sickr-sts_test``.
    """
    path = PurePath(source)
    if path.suffix:
        return f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
    return f"{path.name.split(':')[0]}_{split}"


def parse_named_sources(
    specs: Sequence[str],
    split: str = "test",
    data_root: str | None = None,
    what: str = "STS",
    registry: Mapping[str, str] | None = None,
    default_name: Callable[[str], str] | None = None,
) -> dict[str, str]:
    """``["NAME=SOURCE", "REGISTERED", "SOURCE"]`` -> ``{name: source}``, for every ``[NAME=]SOURCE`` option.

    A spec found in ``registry`` stands for its registered source under that name; another unnamed source is named
    by ``default_name`` (default :func:`sts_name` with ``split``). For STS the spec ``all`` stands for the 7 tasks of
    :data:`STS_ALL` (see :func:`sts_all_sources`). Two sets with one name raise ``ValueError`` naming ``what``.
    """
    registry = registry or {}
    named: dict[str, str] = {}
    expanded: list[str] = []
    for spec in specs:
        if spec == "all" and what == "STS":
            expanded += [f"{name}={source}" for name, source in sts_all_sources(data_root).items()]
        else:
            expanded.append(spec)
    for spec in expanded:
        name, sep, source = spec.partition("=")
        if not sep:
            if spec in registry:
                name, source = spec, registry[spec]
            else:
                name, source = (default_name(spec) if default_name else sts_name(spec, split)), spec
        if name in named:
            raise ValueError(f"two {what} sets are named {name!r}: name them explicitly with NAME=SOURCE")
        named[name] = source
    return named


def sts_correlation(
    encoder: TextEncoder | Embedder,
    sentence1: list[str],
    sentence2: list[str],
    scores: torch.Tensor,
    batch_size: int = 64,
    precision: str = "float32",
    name: str = "'sts'",
    instruction: str | None = None,
) -> tuple[float, float]:
    """Spearman and Pearson (x100) between ``cos(e(s1), e(s2))`` and ``scores``; each distinct text is encoded once.

    ``encoder`` is a lightembed module (``batch_size``, ``precision`` and ``instruction`` apply) or any object with
    ``encode(texts)`` such as an :class:`EncodeCache`.
    """
    if scores.numel() < 2 or torch.all(scores == scores[0]):
        raise ValueError(f"STS set {name}: scores are constant (or fewer than 2 pairs), Spearman is undefined")
    texts = list(dict.fromkeys(sentence1 + sentence2))
    index = {text: i for i, text in enumerate(texts)}
    if isinstance(encoder, TextEncoder):
        embeddings = encoder.encode(texts, batch_size=batch_size, precision=precision, instruction=instruction)
    else:
        cache = encoder if isinstance(encoder, EncodeCache) else EncodeCache(encoder)
        embeddings = torch.from_numpy(cache.encode(texts))  # (T, H)
    left = embeddings[torch.tensor([index[s] for s in sentence1])]  # (N, H)
    right = embeddings[torch.tensor([index[s] for s in sentence2])]  # (N, H)
    cosine = F.cosine_similarity(left, right, dim=-1).double()  # (N,)
    gold = scores.double()
    return float(spearman_corrcoef(cosine, gold)) * 100, float(pearson_corrcoef(cosine, gold)) * 100


def evaluate_sts(
    encoder: TextEncoder | Embedder,
    sources: dict[str, str],
    split: str = "test",
    data_root: str | None = None,
    batch_size: int = 64,
    precision: str = "float32",
    instruction: str | None = None,
    score_range: tuple[float, float] | None = STS_SCORE_RANGE,
) -> list[STSResult]:
    """Evaluate ``encoder`` on named STS sources (local files or Hub ids with sentence1, sentence2, score).

    ``instruction`` is prefixed to every sentence and excluded from pooling (instructed decoders). ``encoder`` may
    also be an :class:`EncodeCache` shared with other evaluators, or any object with ``encode(texts)``. The sets are
    read and checked as a data module's STS sets are (:func:`~lightembed.data.formats.load_sts`: a score outside
    ``score_range`` or constant scores are an error naming the file).
    """
    results = []
    for name, source in sources.items():
        dataset = load_sts(source, split, data_root, score_range=score_range)
        where = resolve_source(source, split, data_root).describe()
        spearman, pearson = sts_correlation(
            encoder,
            list(dataset["anchor"]),
            list(dataset["positive"]),
            torch.tensor(dataset["score"], dtype=torch.float64),
            batch_size=batch_size,
            precision=precision,
            name=f"{name!r} ({where})",
            instruction=instruction,
        )
        results.append(STSResult(name, source, spearman, pearson, len(dataset)))
    return results


def format_table(results: list[STSResult]) -> str:
    """A markdown table of STS results, with the mean Spearman as the last row when there are several sets."""
    lines = ["| set | pairs | spearman | pearson |", "|---|---:|---:|---:|"]
    lines += [f"| {r.name} | {r.pairs} | {r.spearman:.2f} | {r.pearson:.2f} |" for r in results]
    if len(results) > 1:
        mean = sum(r.spearman for r in results) / len(results)
        lines.append(f"| **mean** | | **{mean:.2f}** | |")
    return "\n".join(lines)
