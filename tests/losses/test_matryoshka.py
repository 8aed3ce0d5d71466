"""MatryoshkaLoss: the weighted sum of the inner loss over embedding prefixes, exact values and gradients."""

import pytest
import torch

from lightembed.encoder import EncoderSettings
from lightembed.losses import (
    AnglEObjectiveLoss,
    BatchHardTripletLoss,
    CoSENTLoss,
    GISTEmbedLoss,
    InBatchNegativesLoss,
    MatryoshkaLoss,
    TripletLoss,
)
from lightembed.stages import ContrastiveModule
from lightembed.stages.batch_embedding import GradCacheEmbedding

B, H = 6, 16
DIMS = [16, 8, 4]
WEIGHTS = [1.0, 0.5, 2.0]


def _inputs(seed: int = 0, negatives: int = 0):
    g = torch.Generator().manual_seed(seed)
    anchor = torch.randn(B, H, generator=g, dtype=torch.float64, requires_grad=True)
    positive = torch.randn(B, H, generator=g, dtype=torch.float64, requires_grad=True)
    negative = torch.randn(B, negatives, H, generator=g, dtype=torch.float64, requires_grad=True) if negatives else None
    return anchor, positive, negative


def _naive(inner, anchor, positive, negative, dims, weights, **kwargs):
    total = 0.0
    for d, w in zip(dims, weights, strict=True):
        neg = None if negative is None else negative[..., :d].clone()
        total = total + w * inner(anchor[..., :d].clone(), positive[..., :d].clone(), neg, **kwargs)
    return total


CASES = {
    "angle-labels": (AnglEObjectiveLoss, 0, True),
    "cosent-labels": (CoSENTLoss, 0, True),
    "in-batch-hard-negatives": (InBatchNegativesLoss, 2, False),
    "simcse-infonce": (lambda: InBatchNegativesLoss(temperature=0.05), 0, False),
}


@pytest.mark.parametrize("name", CASES)
def test_equals_naive_loop_with_exact_gradients(name):
    make, negatives, with_labels = CASES[name]
    inner = make()
    anchor, positive, negative = _inputs(negatives=negatives)
    labels = torch.tensor([4.8, 4.5, 0.4, 4.0, 3.6, 4.2], dtype=torch.float64) if with_labels else None
    ids = {"anchor_ids": torch.tensor([0, 1, 2, 3, 4, 0]), "positive_ids": torch.arange(10, 16)}
    loss = MatryoshkaLoss(inner, [8, 16, 4], [0.5, 1.0, 2.0])(anchor, positive, negative, labels, **ids)
    grads = torch.autograd.grad(loss, [t for t in (anchor, positive, negative) if t is not None])
    reference = _naive(inner, anchor, positive, negative, DIMS, WEIGHTS, labels=labels, **ids)
    ref_grads = torch.autograd.grad(reference, [t for t in (anchor, positive, negative) if t is not None])
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the prefixes really differ: the sum is not one loss times the total weight
    assert not torch.isclose(loss, sum(WEIGHTS) * inner(anchor, positive, negative, labels=labels, **ids))


def test_label_losses_and_guide_embeddings_pass_through():
    anchor, _, _ = _inputs()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    inner = BatchHardTripletLoss(margin=1.0)
    got = MatryoshkaLoss(inner, [16, 4])(anchor, labels=labels)
    torch.testing.assert_close(got, inner(anchor[:, :16], labels=labels) + inner(anchor[:, :4], labels=labels))
    anchor, positive, _ = _inputs(1)
    guide = {"guide_anchor": anchor.detach() * 2, "guide_positive": positive.detach() + 0.1}
    gist = GISTEmbedLoss()
    got = MatryoshkaLoss(gist, [4])(anchor, positive, **guide)
    torch.testing.assert_close(got, gist(anchor[:, :4], positive[:, :4], **guide))


@pytest.mark.parametrize(
    ("dims", "weights", "message"),
    [
        ([], None, "needs at least one dimension in dims"),
        ([8, 0], None, "dims must be positive integers, got 0"),
        ([8, -4], None, "dims must be positive integers, got -4"),
        ([8, 4.5], None, r"dims must be positive integers, got 4\.5"),
        ([8, 8], None, r"dims must be distinct, got \[8, 8\]"),
        ([8, 4], [1.0], "weights must have one entry per dim: 2 dims, got 1 weights"),
        ([8, 4], [1.0, -1.0], r"weights must be >= 0, got -1\.0"),
    ],
)
def test_constructor_validation(dims, weights, message):
    with pytest.raises(ValueError, match=message):
        MatryoshkaLoss(CoSENTLoss(), dims, weights)


def test_dim_larger_than_the_embedding_is_refused():
    anchor, positive, _ = _inputs()
    with pytest.raises(ValueError, match="dims must be <= the embedding size 16, got 32"):
        MatryoshkaLoss(CoSENTLoss(), [32, 8])(anchor, positive, labels=torch.ones(B))


def test_dims_are_sorted_with_their_weights():
    loss = MatryoshkaLoss(CoSENTLoss(), [4, 16, 8], [3.0, 1.0, 2.0])
    assert loss.dims == [16, 8, 4] and loss.weights == [1.0, 2.0, 3.0]


def test_gradcache_step_equals_plain_step(tiny_bert_dir, tokenizer, train_step):
    """GradCache wraps the loss on embeddings: micro-batches of 2 give the plain full-batch step (dropout 0)."""
    from lightembed.data.collators import PairCollator

    rows = [
        {"anchor": "A man is playing a guitar.", "positive": "A man plays the guitar.", "score": 4.8},
        {"anchor": "A woman is slicing an onion.", "positive": "A woman cuts an onion.", "score": 4.5},
        {"anchor": "A cat sits on the mat.", "positive": "A dog runs in the park.", "score": 0.4},
        {"anchor": "Kids are playing football.", "positive": "Children play soccer outside.", "score": 4.0},
    ]
    batch = PairCollator(tokenizer, max_length=32)(rows)
    loss = MatryoshkaLoss(AnglEObjectiveLoss(), [32, 16, 8], [1.0, 1.0, 0.5])
    module = ContrastiveModule(EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, dropout=0.0), loss=loss)
    module.configure_model()
    plain_loss, plain = train_step(module, batch)
    module.batch_embedding = GradCacheEmbedding(2)
    cached_loss, cached = train_step(module, batch)
    torch.testing.assert_close(cached_loss, plain_loss, atol=1e-5, rtol=1e-5)
    assert plain.keys() == cached.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], atol=1e-5, rtol=1e-5, msg=name)
    # the wrapped loss really differs from the plain AnglE objective on this batch
    module.loss = AnglEObjectiveLoss()
    assert not torch.isclose(train_step(module, batch)[0], plain_loss)


def test_normalize_renormalises_each_prefix_for_distance_losses():
    anchor, positive, negative = _inputs(negatives=2)
    inner = TripletLoss(margin=0.5)
    got = MatryoshkaLoss(inner, [16, 4], normalize=True)(anchor, positive, negative)
    unit = torch.nn.functional.normalize
    want = sum(
        inner(unit(anchor[:, :d], dim=-1), unit(positive[:, :d], dim=-1), unit(negative[..., :d], dim=-1))
        for d in (16, 4)
    )
    torch.testing.assert_close(got, want)
    assert not torch.isclose(got, MatryoshkaLoss(inner, [16, 4])(anchor, positive, negative))
    # a cosine loss is unchanged by the renormalisation
    labels = torch.tensor([4.8, 4.5, 0.4, 4.0, 3.6, 4.2], dtype=torch.float64)
    torch.testing.assert_close(
        MatryoshkaLoss(CoSENTLoss(), [16, 4], normalize=True)(anchor, positive, labels=labels),
        MatryoshkaLoss(CoSENTLoss(), [16, 4])(anchor, positive, labels=labels),
    )


@pytest.mark.parametrize("inner_name", ["cosent", "triplet"])
def test_matches_sentence_transformers(inner_name):
    st = pytest.importorskip("sentence_transformers.sentence_transformer.losses")

    class Stub(torch.nn.Module):  # their losses take a model; this one returns each column's fixed embeddings
        def forward(self, features):
            return {"sentence_embedding": features["embedding"]}

        def get_embedding_dimension(self):
            return H

    anchor, positive, negative = (t.detach().float() for t in _inputs(negatives=1))
    negative = negative[:, 0]
    stub = Stub()
    if inner_name == "cosent":
        labels = torch.tensor([4.8, 4.5, 0.4, 4.0, 3.6, 4.2])
        ours = MatryoshkaLoss(CoSENTLoss(), DIMS, WEIGHTS)(anchor, positive, labels=labels)
        theirs = st.MatryoshkaLoss(stub, st.CoSENTLoss(stub), DIMS, WEIGHTS)
        want = theirs([{"embedding": anchor}, {"embedding": positive}], labels)
    else:
        ours = MatryoshkaLoss(TripletLoss(margin=0.5), DIMS, WEIGHTS, normalize=True)(anchor, positive, negative)
        theirs = st.MatryoshkaLoss(stub, st.TripletLoss(stub, triplet_margin=0.5), DIMS, WEIGHTS)
        want = theirs([{"embedding": anchor}, {"embedding": positive}, {"embedding": negative}], None)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)


ROWS = [
    {"anchor": "A man is playing a guitar.", "positive": "A man plays the guitar.", "score": 4.8},
    {"anchor": "A woman is slicing an onion.", "positive": "A woman cuts an onion into thin rings.", "score": 4.5},
    {"anchor": "A cat sits on the mat.", "positive": "A dog runs in the park.", "score": 0.4},
    {"anchor": "Kids are playing football on a wide green field.", "positive": "Children play soccer.", "score": 4.0},
]


def test_length_chunked_lora_step_equals_plain_lora_step(tiny_bert_dir, tokenizer, train_step):
    """The Matryoshka loss sees the same embeddings whatever embeds them: length-sorted chunks on a LoRA model give
    the plain step's loss and adapter gradients."""
    from lightembed.data.collators import PairCollator
    from lightembed.lora import LoRASettings
    from lightembed.stages.batch_embedding import LengthChunkedEmbedding

    batch = PairCollator(tokenizer, max_length=32)(ROWS)
    settings = EncoderSettings(
        backbone=str(tiny_bert_dir), max_length=32, dropout=0.0, lora=LoRASettings(r=4, alpha=8, dropout=0.0)
    )
    module = ContrastiveModule(settings, loss=MatryoshkaLoss(AnglEObjectiveLoss(), [32, 16, 8]))
    module.configure_model()
    plain_loss, plain = train_step(module, batch)
    assert plain and all("lora_" in name for name in plain)  # only the adapter trains
    module.batch_embedding = LengthChunkedEmbedding(0.0)
    chunked_loss, chunked = train_step(module, batch)
    torch.testing.assert_close(chunked_loss, plain_loss, atol=1e-5, rtol=1e-5)
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], atol=1e-5, rtol=1e-5, msg=name)


def test_simcse_stage_takes_a_matryoshka_infonce(tiny_bert_dir, tokenizer):
    """SimCSE's InfoNCE wrapped in Matryoshka: the stage's step is the weighted sum of InfoNCE over the prefixes of
    the two dropout views (the stage in eval mode here, so the views are equal and the step can be recomputed by
    hand)."""
    from lightembed.data.collators import SentenceCollator
    from lightembed.stages import SimCSEModule

    batch = SentenceCollator(tokenizer, max_length=32)([row["anchor"] for row in ROWS])
    inner = InBatchNegativesLoss(temperature=0.05)
    module = SimCSEModule(
        EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, dropout=0.1),
        loss=MatryoshkaLoss(inner, [32, 8], [1.0, 0.5]),
    )
    module.configure_model()
    module.eval()  # dropout off: both views are the plain embedding
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        views = module.embed(batch["text"])  # (B, H): both views
        ids = batch["text_ids"]
        expected = inner(views, views, anchor_ids=ids, positive_ids=ids) + 0.5 * inner(
            views[:, :8], views[:, :8], anchor_ids=ids, positive_ids=ids
        )
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
