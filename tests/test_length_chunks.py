"""Length-sorted chunks: the cut plan is the cheapest one (brute force), and the embeddings and gradients equal one
forward pass per field, for every pooling, with instructions on one field, and in a whole training run."""

import itertools
import random
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from lightembed.data.collators import PairCollator
from lightembed.encoder import EncoderSettings
from lightembed.length_chunks import embed_by_length, plan_chunks, right_padded
from lightembed.losses import AnglEObjectiveLoss
from lightembed.pooling import POOLING_STRATEGIES
from lightembed.stages import ContrastiveModule
from lightembed.strategies import FSDP2Strategy

ROWS = [
    ("A man is playing a guitar on a small stage in the park.", "A man plays the guitar.", "A woman cooks.", 4.8),
    ("A woman is slicing an onion.", "A woman cuts an onion into thin rings for the soup.", "A man sleeps.", 4.5),
    ("A cat sits.", "A dog runs in the park.", "The sky is blue and the sun is shining over the hills.", 0.4),
    ("Kids are playing football.", "Children play soccer outside.", "A man plays the guitar.", 4.0),
    ("The stock market fell today after the bank said rates would rise.", "Shares dropped.", "A bird.", 3.6),
]


def _cost(sizes: list[int], lengths: list[int], overhead: float) -> float:
    """Σ over chunks of rows × the chunk's first (longest) length, plus the overhead per chunk."""
    cost, start = 0.0, 0
    for size in sizes:
        cost += size * lengths[start] + overhead
        start += size
    return cost


def _compositions(n: int):
    """Every way to cut n texts into consecutive chunks."""
    for cuts in itertools.product([False, True], repeat=n - 1):
        sizes, size = [], 1
        for cut in cuts:
            if cut:
                sizes.append(size)
                size = 0
            size += 1
        yield [*sizes, size]


@pytest.mark.parametrize("overhead", [0.0, 3.0, 10.0, 1e6])
def test_plan_chunks_finds_the_cheapest_cut_of_all(overhead):
    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 9)
        lengths = sorted((rng.randint(1, 12) for _ in range(n)), reverse=True)
        sizes = plan_chunks(lengths, overhead)
        assert sum(sizes) == n and all(size > 0 for size in sizes)
        best = min(_cost(option, lengths, overhead) for option in _compositions(n))
        assert _cost(sizes, lengths, overhead) == pytest.approx(best)
    assert plan_chunks([], overhead) == []


def test_plan_chunks_extremes_and_errors():
    assert plan_chunks([9, 9, 5, 5, 2], 0.0) == [2, 2, 1]  # free chunks: one per distinct length
    assert plan_chunks([9, 9, 5, 5, 2], 1e9) == [5]  # costly chunks: one forward pass
    with pytest.raises(ValueError, match="longest first"):
        plan_chunks([2, 5], 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        plan_chunks([5, 2], -1.0)


def _fields(tokenizer, instructions=None) -> dict:
    rows = [{"anchor": a, "positive": p, "negative": n} for a, p, n, _ in ROWS]
    batch = PairCollator(tokenizer, max_length=32, instructions=instructions)(rows)
    return {name: batch[name] for name in ("anchor", "positive", "negative")}


@pytest.mark.parametrize("pooling", list(POOLING_STRATEGIES))
@pytest.mark.parametrize("instructions", [None, {"anchor": "Retrieve a similar sentence: "}])
@pytest.mark.parametrize("overhead", [0.0, 40.0])  # one chunk per distinct length; a few chunks of mixed lengths
def test_chunked_embeddings_and_gradients_equal_one_pass_per_field(
    tiny_bert_dir, tokenizer, pooling, instructions, overhead
):
    module = ContrastiveModule(
        EncoderSettings(backbone=str(tiny_bert_dir), pooling=pooling, max_length=32, dropout=0.0)
    )
    module.configure_model()
    fields = _fields(tokenizer, instructions)
    widths = {fields[name]["input_ids"].shape[1] for name in fields}
    assert len(widths) > 1  # the fields are padded to different widths: the join pads them
    torch.manual_seed(0)
    weights = {name: torch.randn(len(ROWS), module.encoder.embedding_dim) for name in fields}

    def run(embed_fields):
        module.zero_grad()
        embeddings = embed_fields()
        sum((embeddings[name] * weights[name]).sum() for name in fields).backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        return {name: e.detach() for name, e in embeddings.items()}, grads

    reference, reference_grads = run(lambda: {name: module.embed(features) for name, features in fields.items()})
    chunked, chunked_grads = run(lambda: embed_by_length(module.embed, fields, overhead=overhead))
    for name in fields:
        torch.testing.assert_close(chunked[name], reference[name], atol=1e-5, rtol=1e-5)
    assert chunked_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():  # sums over every token: rounding grows with the token count
        torch.testing.assert_close(chunked_grads[name], grad, atol=2e-4, rtol=1e-3)


def test_chunks_are_cut_to_their_longest_text_and_left_padding_falls_back(tiny_bert_dir, tokenizer):
    module = ContrastiveModule(EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, dropout=0.0))
    module.configure_model()
    fields = _fields(tokenizer)
    calls = []

    def embed(features):
        calls.append(tuple(features["input_ids"].shape))
        return module.embed(features)

    embed_by_length(embed, fields, overhead=0.0)
    lengths = torch.cat([f["attention_mask"].sum(1) for f in fields.values()])
    assert sum(rows for rows, _ in calls) == lengths.numel()
    assert {width for _, width in calls} == set(lengths.tolist())  # overhead 0: one chunk per distinct length

    calls.clear()
    embed_by_length(embed, fields, overhead=40.0)
    longest_first = sorted(lengths.tolist(), reverse=True)
    assert [rows for rows, _ in calls] == plan_chunks(longest_first, 40.0)
    starts = itertools.accumulate([0] + [rows for rows, _ in calls[:-1]])
    assert [width for _, width in calls] == [longest_first[start] for start in starts]  # each chunk's longest text
    assert 1 < len(calls) < len(set(longest_first))  # chunks of mixed lengths

    left = {name: {k: v.flip(1) for k, v in features.items()} for name, features in fields.items()}  # left padding
    assert not right_padded(left["anchor"]["attention_mask"]) and right_padded(fields["anchor"]["attention_mask"])
    calls.clear()
    out = embed_by_length(embed, left, overhead=0.0)
    assert calls == [tuple(features["input_ids"].shape) for features in left.values()]  # one pass per field
    assert out.keys() == left.keys()


def test_contrastive_module_checks_the_option(tiny_bert_dir):
    with pytest.raises(ValueError, match="length_chunking"):
        ContrastiveModule(EncoderSettings(backbone=str(tiny_bert_dir)), length_chunking=-1)
    with pytest.raises(ValueError, match="either length_chunking or micro_batch_size"):
        ContrastiveModule(EncoderSettings(backbone=str(tiny_bert_dir)), length_chunking=100, micro_batch_size=2)


@pytest.mark.parametrize("strategy", [FSDP2Strategy(), DDPStrategy()], ids=["fsdp2", "ddp"])
def test_sharded_strategies_refuse_length_chunking_on_several_processes(tiny_bert_dir, strategy):
    """Under FSDP each forward pass is a collective, so ranks must make as many; under DDP the count is free."""
    module = ContrastiveModule(EncoderSettings(backbone=str(tiny_bert_dir)), length_chunking=160)
    module._trainer = SimpleNamespace(
        accelerator=None, precision="32-true", accumulate_grad_batches=1, strategy=strategy, world_size=2, optimizers=[]
    )
    if isinstance(strategy, DDPStrategy):
        module.on_fit_start()
    else:
        with pytest.raises(ValueError, match="length_chunking with FSDP2Strategy on 2 processes"):
            module.on_fit_start()


def test_a_chunked_training_step_gives_the_loss_and_gradients_of_the_plain_one(tiny_bert_dir, tokenizer):
    rows = [{"anchor": a, "positive": p, "score": s} for a, p, _, s in ROWS]
    batch = PairCollator(tokenizer, max_length=32)(rows)
    results = []
    for length_chunking in (None, 0.0):
        torch.manual_seed(0)
        module = ContrastiveModule(
            EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, dropout=0.0),
            loss=AnglEObjectiveLoss(),
            length_chunking=length_chunking,
        )
        module.configure_model()
        loss = module.training_step(batch, 0)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}))
    (plain_loss, plain_grads), (chunked_loss, chunked_grads) = results
    torch.testing.assert_close(chunked_loss, plain_loss, atol=1e-5, rtol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-5, rtol=1e-4)
