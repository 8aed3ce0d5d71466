"""The MTEB adapter with the real ``mteb`` package, offline: local tasks built from files, scored by ``mteb.evaluate``.

Every test runs with the Hugging Face Hub switched off and sockets refused, so a task or model that tried to download
would fail here; ``mteb``'s result files go under ``tmp_path``.
"""

import json
import math
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightembed.api import load_encoder
from lightembed.evaluation.mteb import MTEBEncoder, run_mteb
from lightembed.evaluation.sts import evaluate_sts

ROOT = Path(__file__).resolve().parents[2]
STSB_TEST = Path(os.environ.get("LIGHTEMBED_DATA") or ROOT.parent / "shared" / "data") / "sts" / "stsb" / "test.jsonl"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No Hub, no sockets; ``mteb``'s default cache (created when it is imported) under ``tmp_path``."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MTEB_CACHE", str(tmp_path / "mteb-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    def refuse(self, address):
        raise OSError(f"test is offline: refused a connection to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def tasks():
    """The helper module that builds local ``mteb`` tasks (imported here, after nothing else imported ``mteb``)."""
    import local_mteb_tasks

    return local_mteb_tasks


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir):
    return load_encoder(str(tiny_bert_dir))


@pytest.fixture(scope="module")
def adapter(encoder):
    return MTEBEncoder(encoder, batch_size=4, instructions={"LocalRetrieval": "Query: "})


def _read_result(folder: Path, task_name: str) -> dict:
    (path,) = folder.glob(f"results/*/*/{task_name}.json")
    return json.loads(path.read_text())


def test_adapter_is_an_mteb_encoder_with_metadata_and_cosine_similarity(adapter):
    from mteb.models import EncoderProtocol, ModelMeta

    assert isinstance(adapter, EncoderProtocol)
    meta = adapter.mteb_model_meta
    assert isinstance(meta, ModelMeta)
    assert meta.name == "lightembed/" + Path(adapter.model.settings.backbone).name and meta.revision == "local"
    assert meta.embed_dim == 32 and meta.similarity_fn_name.value == "cosine" and meta.use_instructions
    assert meta.n_parameters == sum(p.numel() for p in adapter.model.parameters())
    a, b = np.random.default_rng(0).normal(size=(3, 32)), np.random.default_rng(1).normal(size=(3, 32))
    naive = [[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in b] for x in a]
    np.testing.assert_allclose(adapter.similarity(a, b).numpy(), naive, atol=1e-6)
    np.testing.assert_allclose(adapter.similarity_pairwise(a, b).numpy(), np.diag(naive), atol=1e-6)
    assert MTEBEncoder(adapter.model, name="org/model").mteb_model_meta.name == "org/model"


def test_encode_takes_mteb_dataloaders_and_returns_numpy_like_the_module(adapter):
    out = adapter.encode(DataLoader([{"text": "a cat"}, {"text": "a car"}, {"text": "tea"}], batch_size=2))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3, 32)
    np.testing.assert_allclose(out, adapter.model.encode(["a cat", "a car", "tea"]).numpy(), atol=1e-6)
    assert adapter.encode([{"text": ["a cat", "a car"]}, {"text": ["tea"]}]).shape == (3, 32)
    assert adapter.encode([]).shape == (0, 32)
    with pytest.raises(TypeError, match="single string"):
        adapter.encode("a cat")


def test_instructions_for_queries_only_in_mteb_key_order(adapter, tasks, tmp_path):
    assert adapter.instruction_for("LocalRetrieval", "query") == "Query: "
    assert adapter.instruction_for("LocalRetrieval", "passage") is None  # documents stay plain
    query = adapter.encode(["a cat"], task_name="LocalRetrieval", prompt_type="query")
    plain = adapter.encode(["a cat"], task_name="LocalRetrieval", prompt_type="document")
    assert not np.allclose(query, plain)  # the instruction is in the context, even though it is not pooled
    keyed = MTEBEncoder(
        adapter.model,
        instructions={"Retrieval": "type", "Retrieval-document": "type doc", "LocalRetrieval-query": "task query"},
        default_instruction="default",
    )
    task = tasks.retrieval_task({"q": "x"}, {"d": "y"}, {"q": {"d": 1}})
    assert keyed.instruction_for("LocalRetrieval", "query", task.metadata) == "task query"
    assert keyed.instruction_for("Other", "query", task.metadata) == "type"
    assert keyed.instruction_for("Other", "document", task.metadata) == "type doc"
    assert keyed.instruction_for("Other", None) == "default" and keyed.instruction_for("Other", "document") is None
    prompted = MTEBEncoder(adapter.model, task_prompts=True)
    sts = tasks.sts_task(Path(__file__).parents[1] / "fixtures" / "sts_tiny.jsonl")
    assert prompted.instruction_for(sts.metadata.name, None, sts.metadata) == "Retrieve semantically similar text: "
    asym = tasks.retrieval_task({"q": "x"}, {"d": "y"}, {"q": {"d": 1}}, prompt={"query": "Find the answer."})
    assert prompted.instruction_for(asym.metadata.name, "query", asym.metadata) == "Find the answer: "
    assert prompted.instruction_for(asym.metadata.name, "document", asym.metadata) is None


def _check_sts_matches_evaluate_sts(adapter, encoder, task, path: Path, output: Path) -> float:
    summary = run_mteb(adapter, [task], output_folder=output)
    ours = evaluate_sts(encoder, {"sts": str(path)}, batch_size=4)[0]
    scores = _read_result(output, task.metadata.name)["scores"]["test"][0]  # the result file: 6 decimals
    # `spearman` scores with the adapter's similarity (cosine, as evaluate_sts does): the same number
    assert scores["spearman"] == pytest.approx(ours.spearman / 100, abs=1e-6)
    assert scores["pearson"] == pytest.approx(ours.pearson / 100, abs=1e-6)
    # the main score, `cosine_spearman`, is mteb's own float32 cosine (sklearn's paired distances), whose rounding
    # can swap two nearly tied pairs of a random model; one swap moves Spearman by up to 12 / n^2 (6e-6 on STS-B)
    spearman = summary[task.metadata.name]
    assert scores["main_score"] == scores["cosine_spearman"] == pytest.approx(spearman, abs=1e-6)
    assert spearman == pytest.approx(ours.spearman / 100, abs=1e-5)
    return spearman


def test_sts_task_from_a_local_file_matches_evaluate_sts(adapter, encoder, tasks, fixtures_dir, tmp_path):
    path = fixtures_dir / "sts_tiny.jsonl"
    spearman = _check_sts_matches_evaluate_sts(adapter, encoder, tasks.sts_task(path), path, tmp_path / "out")
    assert -1 <= spearman <= 1


@pytest.mark.skipif(not STSB_TEST.is_file(), reason="needs the local STS-B test split (../shared/data)")
def test_stsb_test_split_as_a_local_mteb_task_matches_evaluate_sts(adapter, encoder, tasks, tmp_path):
    task = tasks.sts_task(STSB_TEST, name="LocalSTSBenchmark")
    spearman = _check_sts_matches_evaluate_sts(adapter, encoder, task, STSB_TEST, tmp_path / "out")
    assert spearman != 0


def _ndcg_at_10(ranking: list[str], relevant: dict[str, int]) -> float:
    """trec_eval's ndcg_cut_10: gain = relevance, discount log2(rank + 1), ideal from the qrels."""
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:10]))
    ideal = sorted(relevant.values(), reverse=True)[:10]
    return dcg / sum(rel / math.log2(rank + 2) for rank, rel in enumerate(ideal))


def test_retrieval_task_ndcg_at_10_matches_a_hand_computation(encoder, tasks, tmp_path):
    queries = {"q1": "A man is playing a guitar.", "q2": "A dog runs across the park.", "q3": "tea or coffee"}
    corpus = {
        "d1": "A man plays the guitar.",
        "d2": "A woman is cutting an onion.",
        "d3": "A dog runs across the park.",  # the query itself: cosine 1, ranked first
        "d4": "Two dogs play in the snow.",
        "d5": "The stock market fell sharply today.",
        "d6": "A cup of hot coffee.",
    }
    qrels = {"q1": {"d1": 2, "d5": 1}, "q2": {"d3": 1, "d4": 2}, "q3": {"d6": 1, "d2": 1}}
    adapter = MTEBEncoder(encoder, batch_size=4)
    summary = run_mteb(adapter, [tasks.retrieval_task(queries, corpus, qrels)], output_folder=tmp_path)

    q = encoder.encode(list(queries.values()))  # (3, H)
    d = encoder.encode(list(corpus.values()))  # (6, H)
    cosine = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T  # (3, 6)
    ids = list(corpus)
    expected = {}
    for i, qid in enumerate(queries):
        ranking = [ids[j] for j in torch.argsort(cosine[i], descending=True).tolist()]
        expected[qid] = _ndcg_at_10(ranking, qrels[qid])
    assert summary == {"LocalRetrieval": pytest.approx(np.mean(list(expected.values())), abs=1e-5)}
    scores = _read_result(tmp_path, "LocalRetrieval")["scores"]["test"][0]
    assert scores["ndcg_at_10"] == pytest.approx(np.mean(list(expected.values())), abs=1e-5)
    assert 0 < summary["LocalRetrieval"] < 1


def test_a_retrieval_run_gives_the_instruction_to_queries_and_not_to_documents(encoder, tasks, tmp_path, monkeypatch):
    seen = []
    real_encode = encoder.encode

    def spy(texts, **kwargs):
        seen.append((tuple(sorted(texts)), kwargs.get("instruction")))
        return real_encode(texts, **kwargs)

    monkeypatch.setattr(encoder, "encode", spy)
    task = tasks.retrieval_task(
        {"q1": "a cat", "q2": "a car"}, {"d1": "kitten", "d2": "truck"}, {"q1": {"d1": 1}, "q2": {"d2": 1}},
        prompt={"query": "Find the matching word."},
    )  # fmt: skip
    run_mteb(MTEBEncoder(encoder, task_prompts=True), [task], output_folder=tmp_path / "a")
    assert sorted(seen) == [(("a car", "a cat"), "Find the matching word: "), (("kitten", "truck"), None)]
    seen.clear()
    run_mteb(MTEBEncoder(encoder, instructions={"LocalRetrieval": "Q: "}), [task], output_folder=tmp_path / "b")
    assert sorted(seen) == [(("a car", "a cat"), "Q: "), (("kitten", "truck"), None)]


def test_run_mteb_names_an_unknown_task(adapter, tmp_path):
    with pytest.raises(ValueError, match="unknown MTEB task.*NoSuchTask"):
        run_mteb(adapter, ["NoSuchTask"], output_folder=tmp_path)


def test_run_mteb_without_the_package_says_how_to_install_it(adapter, monkeypatch):
    monkeypatch.setitem(sys.modules, "mteb", None)  # makes `import mteb` fail
    with pytest.raises(ModuleNotFoundError, match=r"pip install lightembed\[mteb\]"):
        run_mteb(adapter, ["STSBenchmark"])
