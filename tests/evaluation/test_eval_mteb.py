"""MTEB adapter without the mteb package: a tiny fake task calls it as mteb does; run_mteb with a fake module."""

import sys
import types

import numpy as np
import pytest
from scipy.stats import spearmanr

from lightembed.api import load_encoder
from lightembed.evaluation.mteb import MTEBEncoder, run_mteb


@pytest.fixture(scope="module")
def adapter(tiny_bert_dir):
    return MTEBEncoder(load_encoder(str(tiny_bert_dir)), batch_size=4, instructions={"FakeRetrieval": "Query: "})


class FakeSTSTask:
    """Shaped like an mteb STS task: encodes both columns through model.encode(sentences, **kwargs)."""

    name = "FakeSTS"
    pairs = [("a cat", "a kitten"), ("a car", "a truck"), ("the sky", "a bird"), ("tea", "coffee")]
    gold = [4.5, 3.0, 0.5, 2.0]

    def evaluate(self, model):
        s1 = model.encode([a for a, _ in self.pairs], task_name=self.name, batch_size=2, show_progress_bar=False)
        s2 = model.encode([b for _, b in self.pairs], task_name=self.name, batch_size=2, show_progress_bar=False)
        cos = (s1 * s2).sum(1) / np.linalg.norm(s1, axis=1) / np.linalg.norm(s2, axis=1)
        return {"main_score": spearmanr(cos, self.gold).statistic}


def test_fake_task_gets_numpy_embeddings_like_the_module(adapter):
    score = FakeSTSTask().evaluate(adapter)
    assert -1 <= score["main_score"] <= 1
    out = adapter.encode(["a cat", "a car"], task_name="FakeSTS")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 32)
    np.testing.assert_allclose(out, adapter.model.encode(["a cat", "a car"]).numpy(), atol=1e-6)


def test_batched_inputs_and_instructions_for_queries_only(adapter):
    batches = [{"text": ["a cat", "a car"]}, {"text": ["tea"]}]
    assert adapter.encode(batches).shape == (3, 32)
    assert adapter.instruction_for("FakeRetrieval", "query") == "Query: "
    assert adapter.instruction_for("FakeRetrieval", types.SimpleNamespace(value="passage")) is None
    query = adapter.encode(["a cat"], task_name="FakeRetrieval", prompt_type="query")
    plain = adapter.encode(["a cat"], task_name="FakeRetrieval", prompt_type="passage")
    assert not np.allclose(query, plain)  # the instruction is in the context, even though it is not pooled
    assert adapter.encode_corpus([{"title": "T", "text": "body"}]).shape == (1, 32)
    assert adapter.encode([]).shape == (0, 32)
    with pytest.raises(TypeError, match="single string"):
        adapter.encode("a cat")


def test_run_mteb_wires_the_adapter_into_a_fake_mteb(adapter, monkeypatch, tmp_path):
    seen = {}

    class Result:
        task_name = "FakeSTS"
        scores = {"test": [{"main_score": 0.5, "hf_subset": "default"}]}

    class MTEB:
        def __init__(self, tasks):
            seen["tasks"] = tasks

        def run(self, model, output_folder):
            seen["embedding"] = model.encode(["x y"], task_name="FakeSTS")
            seen["output"] = output_folder
            return [Result()]

    fake = types.ModuleType("mteb")
    fake.get_tasks = lambda tasks: [f"task:{t}" for t in tasks]
    fake.MTEB = MTEB
    monkeypatch.setitem(sys.modules, "mteb", fake)
    summary = run_mteb(adapter, ["FakeSTS"], output_folder=tmp_path)
    assert summary == {"FakeSTS": {"test": 0.5}}
    assert seen["tasks"] == ["task:FakeSTS"] and seen["embedding"].shape == (1, 32)


def test_run_mteb_without_the_package_says_how_to_install_it(adapter, monkeypatch):
    monkeypatch.setitem(sys.modules, "mteb", None)  # makes `import mteb` fail
    with pytest.raises(ModuleNotFoundError, match="pip install mteb"):
        run_mteb(adapter, ["STSBenchmark"])
