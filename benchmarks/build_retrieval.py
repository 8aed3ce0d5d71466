"""Build a local retrieval benchmark from the SNLI and WikiText-2 copies in the data folder, in BEIR layout.

Two constructed tasks (neither is a published benchmark; they exist so that retrieval can be measured offline):

**snli**: premise -> entailed hypothesis. Queries are SNLI premises; the corpus is every hypothesis (entailed,
neutral and contradicting) of every premise used, so each query competes against its own neutral and contradicting
hypotheses as well as everyone else's; a query's entailed hypotheses are relevant. Premises of the SNLI dev file
(``nli/snli/validation.jsonl``) are shuffled (seed) and split into the ``dev`` queries and a training file; premises
of the SNLI test file are the ``test`` queries. No premise is in two of train/dev/test.

**wiki_ict**: an inverse cloze task (Lee, Chang and Toutanova, "Latent Retrieval for Weakly Supervised Open Domain
Question Answering", 2019) on WikiText-2. A paragraph is a non-heading line of at least 3 sentences; one sentence
(seeded choice) is the query, the paragraph without that sentence is its one relevant document, and the corpus is
that document of every paragraph used. Paragraphs of ``validation.txt`` are split into ``dev`` and training,
those of ``test.txt`` are ``test``. WikiText's ``@-@``, ``@,@``, ``@.@`` are joined back; ``<unk>`` stays.

Written (for each task, under ``OUT/<task>/``)::

    corpus.jsonl  queries.jsonl  qrels/dev.tsv  qrels/test.tsv     BEIR layout: `lightembed evaluate --retrieval`
    train.jsonl                                                    anchor, positive[, negative]: `fit`, mining

``train.jsonl`` holds (premise, entailed hypothesis, contradicting hypothesis) for snli and (sentence, rest of its
paragraph) for wiki_ict. Their documents are in the corpus too (more distractors), their queries are not.

    python benchmarks/build_retrieval.py [--data-root ../shared/data] [--out benchmarks/data/retrieval]
        [--snli-dev 500] [--snli-test N] [--snli-train N] [--wiki-dev 300] [--wiki-test N] [--wiki-train N]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).parent / "data" / "retrieval"
SNLI_DEV, SNLI_TEST = "nli/snli/validation.jsonl", "nli/snli/test.jsonl"
WIKI_DEV, WIKI_TEST = "corpus/wikitext-2/validation.txt", "corpus/wikitext-2/test.txt"
SENTENCE_END = re.compile(r"(?<= [.!?]) (?=\S)")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_beir(folder: Path, corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, dict[str, list]]):
    """``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (split -> query id -> relevant doc ids)."""
    _write_jsonl(folder / "corpus.jsonl", [{"_id": i, "title": "", "text": t} for i, t in corpus.items()])
    _write_jsonl(folder / "queries.jsonl", [{"_id": i, "text": t} for i, t in queries.items()])
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for split, judged in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, docs in judged.items() for d in docs]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def _snli_premises(path: Path) -> dict[str, list[tuple[str, str]]]:
    """premise -> [(hypothesis, label)], in file order."""
    grouped: dict[str, list[tuple[str, str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["label"] in ("entailment", "neutral", "contradiction"):
            grouped.setdefault(row["premise"], []).append((row["hypothesis"], row["label"]))
    return grouped


def build_snli(root: Path, out: Path, n_dev: int, n_test: int | None, n_train: int | None, seed: int) -> dict:
    dev_file, test_file = _snli_premises(root / SNLI_DEV), _snli_premises(root / SNLI_TEST)
    usable = [p for p, hyps in dev_file.items() if any(label == "entailment" for _, label in hyps)]
    random.Random(seed).shuffle(usable)
    dev, train = usable[:n_dev], usable[n_dev:][:n_train]
    test = [p for p, hyps in test_file.items() if any(label == "entailment" for _, label in hyps)][:n_test]
    corpus: dict[str, str] = {}
    doc_id: dict[str, str] = {}

    def add(text: str) -> str:
        if text not in doc_id:
            doc_id[text] = f"h{len(doc_id)}"
            corpus[doc_id[text]] = text
        return doc_id[text]

    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, list]] = {"dev": {}, "test": {}}
    for split, premises, source in (("dev", dev, dev_file), ("test", test, test_file)):
        for premise in premises:
            qid = f"{split}{len(qrels[split])}"
            queries[qid] = premise
            qrels[split][qid] = [add(h) for h, label in source[premise] if label == "entailment"]
            for h, _ in source[premise]:
                add(h)
    rows = []
    for premise in train:
        hyps = dev_file[premise]
        contradictions = [h for h, label in hyps if label == "contradiction"]
        for h, label in hyps:
            add(h)
            if label == "entailment":
                row = {"anchor": premise, "positive": h}
                if contradictions:
                    row["negative"] = contradictions[0]
                rows.append(row)
    write_beir(out / "snli", corpus, queries, qrels)
    _write_jsonl(out / "snli" / "train.jsonl", rows)
    return {"corpus": len(corpus), "dev": len(dev), "test": len(test), "train": len(rows)}


def _clean(text: str) -> str:
    return text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".").strip()


def _paragraphs(path: Path) -> list[list[str]]:
    """Sentences of each paragraph with at least 3 of them (headings ` = Title = ` skipped)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        sentences = [s for s in SENTENCE_END.split(_clean(line)) if len(s.split()) >= 4]
        if len(sentences) >= 3:
            out.append(sentences)
    return out


def build_wiki(root: Path, out: Path, n_dev: int, n_test: int | None, n_train: int | None, seed: int) -> dict:
    rng = random.Random(seed)
    dev_paragraphs = _paragraphs(root / WIKI_DEV)
    rng.shuffle(dev_paragraphs)
    test_paragraphs = _paragraphs(root / WIKI_TEST)[:n_test]
    splits = {"dev": dev_paragraphs[:n_dev], "test": test_paragraphs, "train": dev_paragraphs[n_dev:][:n_train]}
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, list]] = {"dev": {}, "test": {}}
    rows = []
    for split, paragraphs in splits.items():
        for sentences in paragraphs:
            pick = rng.randrange(len(sentences))
            query, rest = sentences[pick], " ".join(sentences[:pick] + sentences[pick + 1 :])
            doc = f"p{len(corpus)}"
            corpus[doc] = rest
            if split == "train":
                rows.append({"anchor": query, "positive": rest})
            else:
                qid = f"{split}{len(qrels[split])}"
                queries[qid] = query
                qrels[split][qid] = [doc]
    write_beir(out / "wiki_ict", corpus, queries, qrels)
    _write_jsonl(out / "wiki_ict" / "train.jsonl", rows)
    return {"corpus": len(corpus), "dev": len(splits["dev"]), "test": len(test_paragraphs), "train": len(rows)}


def build(
    data_root: Path,
    out: Path = DEFAULT_OUT,
    *,
    snli_dev: int = 500,
    snli_test: int | None = None,
    snli_train: int | None = None,
    wiki_dev: int = 300,
    wiki_test: int | None = None,
    wiki_train: int | None = None,
    seed: int = 0,
) -> dict[str, dict]:
    """Write both tasks under ``out``; returns their sizes."""
    for needed in (SNLI_DEV, SNLI_TEST, WIKI_DEV, WIKI_TEST):
        if not (data_root / needed).is_file():
            raise FileNotFoundError(f"{data_root / needed} not found: --data-root must hold nli/snli and corpus/")
    sizes = {
        "snli": build_snli(data_root, out, snli_dev, snli_test, snli_train, seed),
        "wiki_ict": build_wiki(data_root, out, wiki_dev, wiki_test, wiki_train, seed),
    }
    (out / "sizes.json").write_text(json.dumps(sizes, indent=2) + "\n")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder holding nli/snli and corpus/wikitext-2")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    for name, default in (("snli-dev", 500), ("snli-test", None), ("snli-train", None)):
        parser.add_argument(f"--{name}", type=int, default=default)
    for name, default in (("wiki-dev", 300), ("wiki-test", None), ("wiki-train", None)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    import os

    root = ns.data_root or os.environ.get("LIGHTEMBED_DATA")
    if not root:
        sys.exit("set --data-root or LIGHTEMBED_DATA to the folder holding nli/snli and corpus/ (e.g. ../shared/data)")
    sizes = build(
        Path(root),
        Path(ns.out),
        snli_dev=ns.snli_dev,
        snli_test=ns.snli_test,
        snli_train=ns.snli_train,
        wiki_dev=ns.wiki_dev,
        wiki_test=ns.wiki_test,
        wiki_train=ns.wiki_train,
        seed=ns.seed,
    )
    print(json.dumps(sizes, indent=2))


if __name__ == "__main__":
    main()
