"""Reranking: MAP / MRR@10 / nDCG@10 equal sentence-transformers' RerankingEvaluator on the same embeddings; the
loader merges rows per query; samples without a positive or a negative are dropped as there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightembed.evaluation.reranking import RerankingSample, evaluate_reranking, format_reranking_table
from lightembed.evaluation.retrieval_data import load_reranking


class LookupModel:
    def __init__(self, table):
        self.table = table

    def _get(self, texts, **kwargs):
        return torch.tensor(np.stack([self.table[t] for t in texts]))

    encode_query = encode_document = _get

    def encode(self, texts, **kwargs):
        return self._get(texts).numpy()


def test_reranking_equals_sentence_transformers_reranking_evaluator():
    st_eval = pytest.importorskip("sentence_transformers.evaluation")
    rng = np.random.default_rng(0)
    samples, table = [], {}
    for i in range(30):
        query = f"query {i}"
        pos = [f"pos {i}.{j}" for j in range(rng.integers(1, 4))]
        neg = [f"neg {i}.{j}" for j in range(rng.integers(1, 15))]
        table[query] = rng.standard_normal(12).astype(np.float32)
        for t in pos:
            table[t] = table[query] + 1.5 * rng.standard_normal(12).astype(np.float32)
        for t in neg:
            table[t] = rng.standard_normal(12).astype(np.float32)
        samples.append(RerankingSample(query, pos, neg))
    samples.append(RerankingSample("lonely", ["pos only"], []))  # dropped on both sides
    table["lonely"] = table["pos only"] = np.ones(12, dtype=np.float32)
    model = LookupModel(table)
    evaluator = st_eval.RerankingEvaluator(
        [{"query": s.query, "positive": s.positive, "negative": s.negative} for s in samples], at_k=10, write_csv=False
    )
    expected = evaluator.compute_metrics(model)
    ours = evaluate_reranking(model, {"rand": samples})[0]
    assert ours.samples == 30
    assert ours.map == pytest.approx(expected["map"], abs=1e-6)
    assert ours.mrr == pytest.approx(expected["mrr"], abs=1e-6)
    assert ours.ndcg == pytest.approx(expected["ndcg"], abs=1e-6)
    assert set(ours.to_dict()) >= {"map", "mrr@10", "ndcg@10"}
    assert "| rand | 30 |" in format_reranking_table([ours])


def test_reranking_loader_merges_rows_per_query(tmp_path, write_jsonl, vector_encoder):
    path = write_jsonl(
        tmp_path / "rr.jsonl",
        [
            {"query": "v:1,0 q", "positive": "v:1,0 p", "negative": "v:0,1 n1"},
            {"query": "v:1,0 q", "positive": "v:1,0 p", "negative": "v:-1,0 n2"},
            {"query": "v:0,1 r", "positive": "v:1,0 p", "negative": "v:0,1 n1"},  # negative beats positive
        ],
    )
    samples = load_reranking(str(path))
    assert samples[0] == RerankingSample("v:1,0 q", ["v:1,0 p"], ["v:0,1 n1", "v:-1,0 n2"])
    result = evaluate_reranking(vector_encoder, {"rr": samples})[0]
    assert result.mrr == pytest.approx((1 + 0.5) / 2) and result.map == pytest.approx((1 + 0.5) / 2)
    no_neg = write_jsonl(tmp_path / "nn.jsonl", [{"query": "a", "positive": "b"}])
    with pytest.raises(ValueError, match="no negative texts"):
        load_reranking(str(no_neg))
    with pytest.raises(ValueError, match="at_k"):
        evaluate_reranking(vector_encoder, {"rr": samples}, at_k=0)
