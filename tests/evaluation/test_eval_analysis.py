"""LLM2Vec analyses on the tiny Llama: per-layer causal/bidirectional similarity and the shared-prefix test."""

import json

import pytest
import torch
import torch.nn.functional as F

from lightembed.backbones import load_backbone, load_tokenizer
from lightembed.evaluation.analysis import (
    attention,
    format_layer_similarity,
    format_prefix_test,
    layer_similarity,
    load_triples,
    prefix_test,
)
from lightembed.evaluation.prefix_triples import PREFIX_TRIPLES

TEXTS = ["The cat sat on the mat.", "A storm hit the coast last night and the power went out."]


def test_layer_similarity_matches_a_manual_computation(tiny_llama_dir):
    result = layer_similarity(str(tiny_llama_dir), TEXTS, batch_size=1)
    assert result.layers == [0, 1, 2] and result.texts == 2
    assert result.mean[0] == pytest.approx(1.0)  # the embedding layer does not attend
    # by hand: two separately loaded models, one causal and one bidirectional, token by token
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    causal = load_backbone(str(tiny_llama_dir), bidirectional=False).eval()
    bidir = load_backbone(str(tiny_llama_dir), bidirectional=True).eval()
    cosines = [[], [], []]
    with torch.no_grad():
        for text in TEXTS:
            ids = tokenizer([text], return_tensors="pt")
            a = causal(**ids, output_hidden_states=True).hidden_states
            b = bidir(**ids, output_hidden_states=True).hidden_states
            for layer in range(3):
                cosines[layer] += F.cosine_similarity(a[layer][0], b[layer][0], dim=-1).tolist()
    assert result.tokens == len(cosines[0])
    for layer in range(3):
        assert result.mean[layer] == pytest.approx(sum(cosines[layer]) / len(cosines[layer]), abs=1e-5)
    assert result.mean[2] < 0.9999  # attention direction matters after the first block
    assert "| 0 | 1.0000 |" in format_layer_similarity(result)


def test_attention_switch_is_restored(tiny_llama_dir):
    model = load_backbone(str(tiny_llama_dir))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(ids).last_hidden_state
        with attention(model, bidirectional=True):
            inside = model(ids).last_hidden_state
        after = model(ids).last_hidden_state
    assert torch.equal(before, after) and not torch.allclose(before, inside)


def test_prefix_test_causal_prefixes_cannot_see_the_future(tiny_llama_dir):
    triples = list(PREFIX_TRIPLES[:6])
    result = prefix_test(str(tiny_llama_dir), triples, batch_size=4)
    assert result.triples == 6 and result.layers == [0, 1, 2]
    # causal: the prefix states are identical in q, s+ and s-: every triple is a tie, accuracy 0
    assert result.causal.ties == [1.0, 1.0, 1.0]
    assert result.causal.accuracy == [0.0, 0.0, 0.0]
    assert result.causal.sim_positive == pytest.approx(result.causal.sim_negative, abs=1e-5)
    # bidirectional: layer 0 (embeddings) still ties, later layers see the endings
    assert result.bidirectional.ties[0] == 1.0
    assert result.bidirectional.ties[2] < 1.0
    assert "shared-prefix test: 6 triples" in format_prefix_test(result)


def test_prefix_pooling_reads_only_prefix_tokens(tiny_llama_dir):
    # a triple whose three texts are identical gives cos = 1 in both modes
    same = [{"prefix": "The dog barked", "query": "loudly.", "positive": "loudly.", "negative": "loudly."}]
    result = prefix_test(str(tiny_llama_dir), same, pooling="last")
    assert result.bidirectional.sim_positive == pytest.approx([1.0], abs=1e-5)


def test_triples_file_errors_and_encoder_refusal(tmp_path, tiny_bert_dir):
    bad = tmp_path / "triples.jsonl"
    bad.write_text(json.dumps({"prefix": "A", "query": "B", "positive": "C"}) + "\n")
    with pytest.raises(ValueError, match=r"triple 0 .*triples\.jsonl.*negative"):
        load_triples(bad)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_triples(tmp_path / "nope.jsonl")
    assert len(load_triples()) == len(PREFIX_TRIPLES) >= 20
    with pytest.raises(ValueError, match="encoder"):
        layer_similarity(str(tiny_bert_dir), TEXTS)


def test_analyze_commands_write_json_and_pictures(tiny_llama_dir, tiny_bert_dir, tiny_data_root, tmp_path, capsys):
    from lightembed.cli import cli_main

    cli_main(
        [
            "analyze",
            "layers",
            str(tiny_llama_dir),
            "--limit",
            "6",
            "--json",
            str(tmp_path / "layers.json"),
            "--plot",
            str(tmp_path / "layers.png"),
        ]
    )
    layers = json.loads((tmp_path / "layers.json").read_text())
    assert layers["texts"] == 6 and layers["mean"][0] == pytest.approx(1.0)
    cli_main(
        [
            "analyze",
            "prefix",
            str(tiny_llama_dir),
            "--json",
            str(tmp_path / "prefix.json"),
            "--plot",
            str(tmp_path / "prefix.png"),
        ]
    )
    prefix = json.loads((tmp_path / "prefix.json").read_text())
    assert prefix["triples"] == len(PREFIX_TRIPLES) and prefix["causal"]["accuracy"][-1] == 0.0
    cli_main(
        [
            "analyze",
            "pca",
            f"a={tiny_bert_dir}",
            f"b={tiny_bert_dir}",
            "--source",
            "classification/trec/train.jsonl",
            "--data-root",
            str(tiny_data_root),
            "--plot",
            str(tmp_path / "pca.png"),
        ]
    )
    assert "| a |" in capsys.readouterr().out
    for name in ("layers.png", "prefix.png", "pca.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="--plot"):
        cli_main(["analyze", "prefix", str(tiny_llama_dir), "--plot", str(tmp_path / "x.svg")])
