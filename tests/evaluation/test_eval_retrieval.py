"""Retrieval metrics: parity with sentence-transformers' InformationRetrievalEvaluator on the same embeddings, exact
chunked search against a brute-force sort, faiss against the exact index, hand-computed metrics, and the loaders
(BEIR folder, query/positive rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightembed.evaluation.retrieval import (
    RetrievalTask,
    evaluate_retrieval,
    evaluate_retrieval_embeddings,
    exact_top_k,
    ranking_metrics,
)
from lightembed.evaluation.retrieval_data import load_beir, load_pairs_task, load_retrieval


class LookupModel:
    """Returns stored embeddings for texts; duck-types what sentence-transformers' evaluators call."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.asked: list[str] = []

    def _get(self, texts, **kwargs):
        self.asked += list(texts)
        return torch.tensor(np.stack([self.table[t] for t in texts]))

    encode_query = encode_document = _get

    def encode(self, texts, **kwargs):
        return self._get(texts).numpy()


def random_task(seed: int = 0, n_queries: int = 40, n_corpus: int = 300, dim: int = 16):
    rng = np.random.default_rng(seed)
    queries = {f"q{i}": f"query {i}" for i in range(n_queries)}
    corpus = {f"doc{j:03d}": f"document {j}" for j in range(n_corpus)}
    relevant = {}
    for i in range(n_queries - 3):  # the last queries have no judgement: both sides skip them
        relevant[f"q{i}"] = {f"doc{j:03d}" for j in rng.choice(n_corpus, size=rng.integers(1, 6), replace=False)}
    table = {t: rng.standard_normal(dim).astype(np.float32) for t in [*queries.values(), *corpus.values()]}
    for q, docs in relevant.items():  # make relevant documents likelier near the top
        for d in docs:
            table[corpus[d]] = table[queries[q]] + 0.8 * rng.standard_normal(dim).astype(np.float32)
    return RetrievalTask("rand", queries, corpus, relevant), LookupModel(table)


def test_every_metric_equals_sentence_transformers_information_retrieval_evaluator():
    st_eval = pytest.importorskip("sentence_transformers.evaluation")
    from sentence_transformers.util import cos_sim, dot_score

    task, model = random_task()
    ks = [1, 3, 5, 10, 100]
    for score, fn in (("cosine", cos_sim), ("dot", dot_score)):
        evaluator = st_eval.InformationRetrievalEvaluator(
            task.queries,
            task.corpus,
            task.relevant,
            corpus_chunk_size=70,
            mrr_at_k=ks,
            ndcg_at_k=ks,
            accuracy_at_k=ks,
            precision_recall_at_k=ks,
            map_at_k=ks,
            score_functions={score: fn},
            write_csv=False,
        )
        expected = evaluator.compute_all_metrics(model)[score]
        ours = evaluate_retrieval(model, [task], ks=ks, score=score)[0].metrics
        assert len(ours) == 6 * len(ks)
        for metric, per_k in expected.items():
            for k, value in per_k.items():
                assert ours[f"{metric.removesuffix('@k')}@{k}"] == pytest.approx(float(value), abs=1e-6), (metric, k)


def test_chunked_top_k_equals_a_full_sort():
    gen = torch.Generator().manual_seed(3)
    queries, corpus = torch.randn(37, 8, generator=gen), torch.randn(1001, 8, generator=gen)
    for score in ("cosine", "dot"):
        values, indices = exact_top_k(queries, corpus, 25, score=score, query_chunk=10, corpus_chunk=97)
        if score == "cosine":
            full = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(corpus, dim=-1).T
        else:
            full = queries @ corpus.T
        expected_v, expected_i = full.topk(25, dim=1)
        assert torch.equal(indices, expected_i) and torch.allclose(values, expected_v, atol=1e-6)
    values, indices = exact_top_k(queries, corpus[:3], 10)  # fewer documents than k
    assert indices.shape == (37, 3)
    with pytest.raises(ValueError, match="unknown score"):
        exact_top_k(queries, corpus, 2, score="l2")


def test_faiss_backend_gives_the_exact_results():
    pytest.importorskip("faiss")
    task, model = random_task(seed=1)
    exact = evaluate_retrieval(model, [task], score="cosine")[0].metrics
    flat = evaluate_retrieval(model, [task], score="cosine", backend="faiss")[0].metrics
    assert flat == pytest.approx(exact, abs=1e-6)


def test_metrics_by_hand():
    # query 1: relevant {a, c}, ranking a x c ; query 2: relevant {z}, ranking x y (z not retrieved)
    metrics = ranking_metrics([["a", "x", "c"], ["x", "y"]], [{"a", "c"}, {"z"}], ks=[1, 3])
    assert metrics["precision@1"] == pytest.approx(0.5)
    assert metrics["recall@3"] == pytest.approx(0.5)  # (2/2 + 0) / 2
    assert metrics["mrr@3"] == pytest.approx(0.5)
    assert metrics["map@3"] == pytest.approx((1 + 2 / 3) / 2 / 2)
    assert metrics["ndcg@3"] == pytest.approx((1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)) / 2)
    assert metrics["accuracy@1"] == pytest.approx(0.5)


def test_query_instruction_reaches_queries_only():
    calls = []

    class Recorder:
        def encode(self, texts, **kwargs):
            calls.append(list(texts))
            return np.ones((len(texts), 2), dtype=np.float32)

    from lightembed.evaluation.encoding import EncodeCache

    task = RetrievalTask("t", {"q": "find"}, {"d": "doc"}, {"q": {"d"}})
    cache = EncodeCache(Recorder())
    evaluate_retrieval(cache, [task], query_instruction="Retrieve: ", ks=[1])
    # a duck-typed encoder has no instruction support; the cache records which instruction each text got
    assert calls == [["find"], ["doc"]]
    with pytest.raises(ValueError, match="no query has a relevant"):
        evaluate_retrieval(cache, [RetrievalTask("e", {"q": "x"}, {"d": "y"}, {})])
    with pytest.raises(ValueError, match="positive integers"):
        evaluate_retrieval(cache, [task], ks=[0])


def test_instruction_is_excluded_from_pooling_for_queries(tiny_bert_dir):
    from lightembed.api import load_encoder

    encoder = load_encoder(str(tiny_bert_dir))
    task = RetrievalTask("t", {"q": "a query text"}, {"d": "a document"}, {"q": {"d"}})
    seen = []
    original = encoder.encode

    def spy(texts, **kwargs):
        seen.append((list(texts), kwargs.get("instruction")))
        return original(texts, **kwargs)

    encoder.encode = spy
    evaluate_retrieval(encoder, [task], query_instruction="query: ", ks=[1])
    assert (["a query text"], "query: ") in seen and (["a document"], None) in seen


def write_beir(folder, write_jsonl):
    write_jsonl(
        folder / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Cats", "text": "v:1,0 cats purr"},
            {"_id": "d2", "title": "", "text": "v:0,1 dogs bark"},
            {"_id": "d3", "title": "Fish", "text": "v:-1,0 fish swim"},
        ],
    )
    write_jsonl(folder / "queries.jsonl", [{"_id": "1", "text": "v:1,0.1 cat?"}, {"_id": "2", "text": "v:0,1 dog?"}])
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\t1\n2\td3\t0\n")
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n1\td3\t1\n")
    return folder


def test_beir_folder_loads_and_scores(tmp_path, write_jsonl, vector_encoder):
    folder = write_beir(tmp_path / "beir", write_jsonl)
    task = load_beir("toy", str(folder), split="test")
    assert task.corpus["d1"] == "Cats v:1,0 cats purr" and task.corpus["d2"] == "v:0,1 dogs bark"
    assert task.relevant == {"1": {"d1"}, "2": {"d2"}}  # score 0 is not relevant
    # title first, then the text: the vector encoder reads the first word, so score the text without title
    task.corpus = {k: v.split(" ", 1)[1] if not v.startswith("v:") else v for k, v in task.corpus.items()}
    result = evaluate_retrieval(vector_encoder, [task], ks=[1, 3])[0]
    assert result.metrics["ndcg@1"] == 1.0 and result.queries == 2 and result.corpus == 3
    dev = load_retrieval("toy", str(folder), split="dev")
    assert dev.relevant == {"1": {"d3"}}
    with pytest.raises(FileNotFoundError, match=r"no qrels/train.tsv \(splits found: \['dev', 'test'\]\)"):
        load_beir("toy", str(folder), split="train")
    (folder / "qrels" / "bad.tsv").write_text("query-id\tcorpus-id\tscore\n1\tnope\t1\n")
    with pytest.raises(ValueError, match="not in corpus.jsonl"):
        load_beir("toy", str(folder), split="bad")


def test_pairs_file_becomes_a_retrieval_task(tmp_path, write_jsonl, vector_encoder):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"query": "v:1,0 a", "positive": "v:1,0.1 a+", "negative": "v:0,1 b+"},
            {"query": "v:1,0 a", "positive": "v:1,-0.1 a++", "negative": "v:-1,0 c"},
            {"query": "v:0,1 b", "positive": "v:0,1 b+", "negative": "v:1,0.1 a+"},
        ],
    )
    task = load_retrieval("p", str(path))
    assert len(task.queries) == 2 and len(task.corpus) == 4
    assert [len(task.relevant[q]) for q in task.queries] == [2, 1]
    metrics = evaluate_retrieval(vector_encoder, [task], ks=[2])[0].metrics
    assert metrics["recall@2"] == 1.0 and metrics["ndcg@2"] == pytest.approx(1.0)
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"query": "v:1,0 a", "positive": "v:1,0 b"}])
    assert load_pairs_task("p", str(plain)).relevant == {"q0": {"d0"}}


def test_embeddings_count_must_match(tmp_path):
    task = RetrievalTask("t", {"q": "x"}, {"d": "y", "e": "z"}, {"q": {"d"}})
    with pytest.raises(ValueError, match="2 documents"):
        evaluate_retrieval_embeddings(task, np.ones((1, 2)), np.ones((1, 2)))
