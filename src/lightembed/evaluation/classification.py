"""SentEval-style classification on frozen sentence embeddings.

A labelled set is a source with ``text, label`` columns (single sentences: MR, CR, SUBJ, MPQA, SST-2, TREC) or
``sentence1, sentence2, label`` (sentence pairs: MRPC, whose features are SentEval's ``[u, v, |u - v|, u * v]``).
The protocol follows SentEval:

* a set without splits (one file, or a folder whose files are not named after splits, e.g. ``mr/all.jsonl``) is
  scored by stratified k-fold cross-validation (10 folds by default), mean accuracy over the folds;
* a set with splits (``train``/``test`` and optionally ``validation`` files, or a Hub dataset) is trained on
  ``train`` and scored on ``test``.

The classifier is logistic regression by default (on standardised features); ``svm`` (linear), ``svm-rbf``,
``nb`` (Gaussian naive Bayes), ``rf`` (random forest) and ``knn`` (cosine k-nearest neighbours) are the others the
AnglE study compares. With ``c_grid`` the regularisation of ``logreg``/``svm``/``svm-rbf`` is chosen per training set:
on the validation split when the set has one, else by an inner k-fold on the training part (SentEval's
``InnerKFoldClassifier``); without it ``C = 1``.

Accuracies are x100. Every distinct text is encoded once, through an
:class:`~lightembed.evaluation.encoding.EncodeCache` that the caller may share with other evaluators.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from lightembed.data.sources import load_source, resolve_source
from lightembed.encoder import TextEncoder
from lightembed.evaluation.encoding import Embedder, EncodeCache, as_cache

CLASSIFIERS = ("logreg", "svm", "svm-rbf", "nb", "rf", "knn")
"""Classifier names accepted by :func:`make_classifier`."""

TUNABLE = ("logreg", "svm", "svm-rbf")
"""Classifiers with a regularisation constant ``C`` that ``c_grid`` tunes."""

SENTEVAL_SETS: dict[str, str] = {
    "mr": "classification/mr",
    "cr": "classification/cr",
    "subj": "classification/subj",
    "mpqa": "classification/mpqa",
    "sst2": "classification/sst2",
    "trec": "classification/trec",
    "mrpc": "pairs/mrpc",
}
"""The SentEval transfer sets, as paths under the data root (see ``../shared/data/README.md``)."""

TEXT_COLUMNS = ("text", "label")
PAIR_COLUMNS = ("sentence1", "sentence2", "label")


def make_classifier(name: str, c: float = 1.0, seed: int = 0, neighbors: int = 5) -> ClassifierMixin:
    """A fresh scikit-learn classifier by name (see :data:`CLASSIFIERS`)."""
    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    if name == "svm":
        return make_pipeline(StandardScaler(), LinearSVC(C=c, max_iter=5000, random_state=seed))
    if name == "svm-rbf":
        return make_pipeline(StandardScaler(), SVC(C=c, kernel="rbf", random_state=seed))
    if name == "nb":
        return GaussianNB()
    if name == "rf":
        return RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=-1)
    if name == "knn":
        return KNeighborsClassifier(n_neighbors=neighbors, metric="cosine")
    raise ValueError(f"unknown classifier {name!r} (option `classifier`); choose from {list(CLASSIFIERS)}")


@dataclass(frozen=True)
class ClassificationResult:
    """One set scored by one classifier: accuracy (and macro F1) x100; ``accuracy_std`` across folds for k-fold."""

    name: str
    source: str
    classifier: str
    protocol: str
    accuracy: float
    f1: float
    n_train: int
    n_test: int
    classes: int
    accuracy_std: float | None = None
    c: float | None = None
    fold_accuracies: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LabelledSet:
    """A classification set read from a source: per split, the texts (or pairs) and the labels as class indices."""

    name: str
    source: str
    where: str
    pairs: bool
    classes: list
    splits: dict[str, tuple[list, np.ndarray]]

    @property
    def has_splits(self) -> bool:
        return "test" in self.splits


def _read(source: str, split: str, data_root: str | None, where: str) -> tuple[list, list, bool]:
    """Rows of one split: ``(texts or (s1, s2) pairs, raw labels, pairs?)``."""
    try:
        ds = load_source(source, TEXT_COLUMNS, split=split, data_root=data_root)
        texts: list = list(ds["text"])
        pairs = False
    except ValueError as err:
        if "missing column" not in str(err):
            raise
        try:
            ds = load_source(source, PAIR_COLUMNS, split=split, data_root=data_root)
        except ValueError as pair_err:
            if "missing column" not in str(pair_err):
                raise
            raise ValueError(
                f"classification set {where}: needs columns {list(TEXT_COLUMNS)} (single texts) or "
                f"{list(PAIR_COLUMNS)} (pairs); {pair_err}"
            ) from pair_err
        texts = list(zip(ds["sentence1"], ds["sentence2"], strict=True))
        pairs = True
    labels = list(ds["label"])
    missing = [i for i, label in enumerate(labels) if label is None]
    if missing:
        raise ValueError(f"classification set {where} split {split!r}: row {missing[0]} (0-based) has no label")
    return texts, labels, pairs


def load_labelled(name: str, source: str, data_root: str | None = None) -> LabelledSet:
    """Read a classification set; which splits it has decides the protocol (module docstring)."""
    train = resolve_source(source, "train", data_root)
    where = f"{name!r} ({train.describe()})"
    split_names: list[str]
    if train.is_local:
        test = resolve_source(source, "test", data_root)
        if test.files == train.files:
            split_names = ["all"]
        else:
            split_names = ["train", "test"]
            try:
                if resolve_source(source, "validation", data_root).files not in (train.files, test.files):
                    split_names.append("validation")
            except FileNotFoundError:
                pass
    else:
        split_names = ["train", "test"]
    splits_raw = {}
    pairs = False
    for split in split_names:
        texts, labels, pairs = _read(source, "train" if split == "all" else split, data_root, where)
        splits_raw[split] = (texts, labels)
    classes = sorted({label for _, labels in splits_raw.values() for label in labels}, key=str)
    if len(classes) < 2:
        raise ValueError(
            f"classification set {where} has a single class ({classes[0]!r} in every row): nothing to classify"
        )
    index = {label: i for i, label in enumerate(classes)}
    splits = {s: (texts, np.array([index[x] for x in labels])) for s, (texts, labels) in splits_raw.items()}
    if "train" in splits and len(set(splits["train"][1].tolist())) < 2:
        raise ValueError(f"classification set {where}: the train split has a single class: nothing to learn")
    return LabelledSet(name, source, where, pairs, classes, splits)


def _features(cache: EncodeCache, items: list, pairs: bool) -> np.ndarray:
    """``(N, H)`` text embeddings, or SentEval pair features ``(N, 4H)``: ``[u, v, |u - v|, u * v]``."""
    if not pairs:
        return cache.encode(items)
    u = cache.encode([a for a, _ in items])
    v = cache.encode([b for _, b in items])
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


def _fit_score(
    classifier: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    c: float,
    seed: int,
) -> tuple[float, float]:
    model = make_classifier(classifier, c=c, seed=seed).fit(x_train, y_train)
    predicted = model.predict(x_test)
    return accuracy_score(y_test, predicted) * 100, f1_score(y_test, predicted, average="macro") * 100


def _choose_c(
    classifier: str,
    x: np.ndarray,
    y: np.ndarray,
    c_grid: Sequence[float] | None,
    seed: int,
    inner_folds: int,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> float | None:
    """The ``C`` of ``c_grid`` with the best validation (or inner k-fold) accuracy; None when not tuned."""
    if not c_grid or classifier not in TUNABLE:
        return None
    scores = []
    for c in c_grid:
        if validation is not None:
            scores.append(_fit_score(classifier, x, y, *validation, c, seed)[0])
            continue
        folds = StratifiedKFold(n_splits=inner_folds, shuffle=True, random_state=seed)
        fold_scores = [_fit_score(classifier, x[a], y[a], x[b], y[b], c, seed)[0] for a, b in folds.split(x, y)]
        scores.append(float(np.mean(fold_scores)))
    return float(c_grid[int(np.argmax(scores))])


def _subsample(items: list, y: np.ndarray, max_train: int | None, seed: int) -> tuple[list, np.ndarray]:
    """At most ``max_train`` rows, a stratified sample in the original order (taken before encoding)."""
    if max_train is None or len(y) <= max_train:
        return items, y
    keep, _ = train_test_split(np.arange(len(y)), train_size=max_train, stratify=y, random_state=seed)
    keep = np.sort(keep)
    return [items[i] for i in keep], y[keep]


def classify(
    data: LabelledSet,
    cache: EncodeCache,
    classifier: str = "logreg",
    folds: int = 10,
    seed: int = 0,
    c_grid: Sequence[float] | None = None,
    inner_folds: int = 5,
    max_train: int | None = None,
) -> ClassificationResult:
    """Score one loaded set with one classifier (k-fold CV or train/test, as the set's splits decide)."""
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r} (option `classifier`); choose from {list(CLASSIFIERS)}")
    if not data.has_splits:
        items, y = data.splits["all"]
        x = _features(cache, items, data.pairs)
        smallest = int(np.bincount(y).min())
        if folds < 2 or smallest < folds:
            raise ValueError(
                f"classification set {data.where}: {folds}-fold cross-validation needs at least {max(folds, 2)} "
                f"rows of every class; the smallest class has {smallest} (option `folds`)"
            )
        accuracies, f1s, chosen = [], [], []
        for train_idx, test_idx in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
            c = _choose_c(classifier, x[train_idx], y[train_idx], c_grid, seed, inner_folds)
            acc, f1 = _fit_score(classifier, x[train_idx], y[train_idx], x[test_idx], y[test_idx], c or 1.0, seed)
            accuracies.append(acc)
            f1s.append(f1)
            chosen.append(c)
        c_report = float(np.median(chosen)) if chosen[0] is not None else None
        return ClassificationResult(
            name=data.name,
            source=data.source,
            classifier=classifier,
            protocol=f"{folds}-fold",
            accuracy=float(np.mean(accuracies)),
            f1=float(np.mean(f1s)),
            n_train=len(y) - len(y) // folds,
            n_test=len(y),
            classes=len(data.classes),
            accuracy_std=float(np.std(accuracies)),
            c=c_report,
            fold_accuracies=[float(a) for a in accuracies],
        )
    train_items, y_train = data.splits["train"]
    test_items, y_test = data.splits["test"]
    train_items, y_train = _subsample(train_items, y_train, max_train, seed)
    x_train = _features(cache, train_items, data.pairs)
    x_test = _features(cache, test_items, data.pairs)
    validation = None
    if "validation" in data.splits:
        val_items, y_val = data.splits["validation"]
        validation = (_features(cache, val_items, data.pairs), y_val)
    c = _choose_c(classifier, x_train, y_train, c_grid, seed, inner_folds, validation)
    acc, f1 = _fit_score(classifier, x_train, y_train, x_test, y_test, c or 1.0, seed)
    return ClassificationResult(
        name=data.name,
        source=data.source,
        classifier=classifier,
        protocol="split",
        accuracy=acc,
        f1=f1,
        n_train=len(y_train),
        n_test=len(y_test),
        classes=len(data.classes),
        c=c,
    )


def evaluate_classification(
    encoder: TextEncoder | Embedder | EncodeCache,
    sources: dict[str, str],
    classifiers: Sequence[str] = ("logreg",),
    data_root: str | None = None,
    folds: int = 10,
    seed: int = 0,
    c_grid: Sequence[float] | None = None,
    inner_folds: int = 5,
    max_train: int | None = None,
    batch_size: int = 64,
    precision: str = "float32",
    instruction: str | None = None,
) -> list[ClassificationResult]:
    """Score ``encoder`` on named classification sources with every classifier in ``classifiers``.

    Args:
        encoder: a lightembed module, any object with ``encode(texts)``, or a shared :class:`EncodeCache`.
        sources: name -> source (local file/folder under ``data_root`` or Hub id); see the module docstring.
        classifiers: names from :data:`CLASSIFIERS`; each set is encoded once for all of them.
        folds: k of the cross-validation for sets without splits.
        seed: seed of the fold split, the subsample and the classifiers.
        c_grid: regularisation constants to choose from (``logreg``/``svm``); None keeps ``C = 1``.
        inner_folds: folds of the inner cross-validation that picks ``C`` where there is no validation split.
        max_train: at most this many training rows (stratified sample) for sets with a train split, e.g. to keep
            SST-2's 67k training phrases affordable; None uses all.
        batch_size, precision, instruction: encoding options for lightembed modules.
    """
    for classifier in classifiers:
        if classifier not in CLASSIFIERS:
            raise ValueError(
                f"unknown classifier {classifier!r} (option `classifier`); choose from {list(CLASSIFIERS)}"
            )
    cache = as_cache(encoder, batch_size=batch_size, precision=precision, instruction=instruction)
    results = []
    for name, source in sources.items():
        data = load_labelled(name, source, data_root)
        for classifier in classifiers:
            results.append(
                classify(
                    data,
                    cache,
                    classifier=classifier,
                    folds=folds,
                    seed=seed,
                    c_grid=c_grid,
                    inner_folds=inner_folds,
                    max_train=max_train,
                )
            )
    return results


def format_classification_table(results: list[ClassificationResult]) -> str:
    """Markdown: one row per set, one accuracy column per classifier, and the mean over sets as the last row."""
    classifiers = list(dict.fromkeys(r.classifier for r in results))
    names = list(dict.fromkeys(r.name for r in results))
    by = {(r.name, r.classifier): r for r in results}
    lines = [
        "| set | protocol | train | test | " + " | ".join(classifiers) + " |",
        "|---|---|---:|---:|" + "---:|" * len(classifiers),
    ]
    for name in names:
        first = next(r for r in results if r.name == name)
        cells = []
        for classifier in classifiers:
            r = by.get((name, classifier))
            cells.append("" if r is None else f"{r.accuracy:.2f}")
        n_train = "" if first.protocol != "split" else str(first.n_train)
        lines.append(f"| {name} | {first.protocol} | {n_train} | {first.n_test} | " + " | ".join(cells) + " |")
    if len(names) > 1:
        means = []
        for classifier in classifiers:
            values = [by[(n, classifier)].accuracy for n in names if (n, classifier) in by]
            means.append(f"**{np.mean(values):.2f}**")
        lines.append("| **mean** | | | | " + " | ".join(means) + " |")
    return "\n".join(lines)
