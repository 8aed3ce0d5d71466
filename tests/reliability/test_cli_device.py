"""``device`` on the analyses `lightembed analyze` runs: the model runs there, results come back on the CPU."""

from __future__ import annotations

import torch

from lightembed.evaluation.analysis import layer_similarity, load_decoder, prefix_test


def test_analyses_take_a_device_and_match_the_default(tiny_llama_dir):
    texts = ["a short text", "another text that is longer"]
    default = layer_similarity(str(tiny_llama_dir), texts, max_length=16)
    on_cpu = layer_similarity(str(tiny_llama_dir), texts, max_length=16, device=torch.device("cpu"))
    assert on_cpu.mean == default.mean and on_cpu.tokens == default.tokens
    backbone, _ = load_decoder(str(tiny_llama_dir), device="cpu")
    assert {p.device.type for p in backbone.parameters()} == {"cpu"}
    result = prefix_test(backbone, tokenizer=load_decoder(str(tiny_llama_dir))[1], device="cpu", max_length=32)
    assert len(result.causal.accuracy) == len(result.layers)
