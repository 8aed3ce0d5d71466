"""GradCache: loss and gradients equal the uncached computation for every foundation loss, with dropout on."""

import lightning as L
import pytest
import torch

from lightembed.data import PairDataModule
from lightembed.data.collators import PairCollator, SentenceCollator
from lightembed.encoder import EncoderSettings
from lightembed.gradcache import split_features
from lightembed.losses import AngleDifferenceLoss, AnglEObjectiveLoss, CoSENTLoss, InBatchNegativesLoss
from lightembed.stages import ContrastiveModule, SimCSEModule
from lightembed.stages.batch_embedding import GradCacheEmbedding

ROWS = [
    ("A man is playing a guitar.", "A man plays the guitar.", "A woman cooks.", 4.8),
    ("A woman is slicing an onion.", "A woman cuts an onion.", "A man sleeps.", 4.5),
    ("A cat sits on the mat.", "A dog runs in the park.", "The sky is blue.", 0.4),
    ("Kids are playing football.", "Children play soccer outside.", "A man plays the guitar.", 4.0),
    ("The stock market fell today.", "Shares dropped sharply.", "A bird is singing.", 3.6),
    ("A man is playing a guitar.", "Someone plays a guitar.", "Kids are playing football.", 4.2),  # duplicate anchor
]
MICRO = 4  # 6 rows -> micro-batches of 4 and 2: an uneven last one is exercised too
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _batch(tokenizer, labels: bool) -> dict:
    rows = [{"anchor": a, "positive": p, **({"score": s} if labels else {"negative": n})} for a, p, n, s in ROWS]
    return PairCollator(tokenizer, max_length=32)(rows)


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _reference(module, fields: dict, loss_fn, seed: int) -> tuple[torch.Tensor, dict]:
    """Uncached: every micro-batch embedded *with* graph, in GradCache's order (same dropout draws), one backward."""
    module.zero_grad()
    torch.manual_seed(seed)
    embeddings = {
        name: torch.cat([module.embed(part) for part in split_features(features, MICRO)])
        for name, features in fields.items()
    }
    loss = loss_fn(embeddings)
    loss.backward()
    return loss.detach(), _grads(module)


def _cached(module, batch, seed: int) -> tuple[torch.Tensor, dict]:
    module.zero_grad()
    torch.manual_seed(seed)
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.detach(), _grads(module)


def _assert_same(reference, cached):
    (ref_loss, ref_grads), (loss, grads) = reference, cached
    torch.testing.assert_close(loss, ref_loss, **TOL)
    assert ref_grads.keys() == grads.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **TOL, msg=name)


LOSSES = {
    "cosent-labels": (CoSENTLoss, True),
    "in-batch-hard-negatives": (lambda: InBatchNegativesLoss(symmetric=True), False),
    "angle-triplets": (AngleDifferenceLoss, False),
    "angle-combination": (AnglEObjectiveLoss, True),
    "angle-combination-triplets": (AnglEObjectiveLoss, False),
}


@pytest.mark.parametrize("name", LOSSES)
def test_gradcache_equals_uncached_with_dropout(tiny_bert_dir, tokenizer, name):
    make_loss, labels = LOSSES[name]
    module = ContrastiveModule(
        EncoderSettings(backbone=str(tiny_bert_dir), max_length=32), loss=make_loss(), micro_batch_size=MICRO
    )
    module.configure_model()
    module.train()
    assert module.backbone.config.hidden_dropout_prob > 0
    batch = _batch(tokenizer, labels)
    fields = {k: batch[k] for k in ("anchor", "positive", "negative") if k in batch}

    def loss_fn(e):
        return module.loss(
            e["anchor"],
            e["positive"],
            e.get("negative"),
            labels=batch.get("score"),
            anchor_ids=batch["anchor_ids"],
            positive_ids=batch["positive_ids"],
            negative_ids=batch.get("negative_ids"),
        )

    reference = _reference(module, fields, loss_fn, seed=1)
    _assert_same(reference, _cached(module, batch, seed=1))
    # dropout is really on: another seed draws other masks and other gradients
    other = _reference(module, fields, loss_fn, seed=2)
    assert not torch.allclose(
        other[1]["encoder.backbone.embeddings.word_embeddings.weight"],
        reference[1]["encoder.backbone.embeddings.word_embeddings.weight"],
    )


def test_gradcache_equals_full_batch_step_without_dropout(tiny_bert_dir, tokenizer):
    """With dropout off the micro-batching is invisible: GradCache = one plain full-batch training step."""
    module = ContrastiveModule(EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, dropout=0.0))
    batch = _batch(tokenizer, labels=True)
    module.configure_model()
    plain = _cached(module, batch, seed=0)  # micro_batch_size None: the plain path
    module.batch_embedding = GradCacheEmbedding(MICRO)
    _assert_same(plain, _cached(module, batch, seed=0))


def test_gradcache_simcse_replays_the_dropout_views(tiny_bert_dir, tokenizer):
    module = SimCSEModule(
        EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, dropout=0.1), micro_batch_size=MICRO
    )
    module.configure_model()
    module.train()
    texts = [r[0] for r in ROWS]
    batch = SentenceCollator(tokenizer, max_length=32)(texts)
    stacked = {k: v.repeat(2, 1) for k, v in batch["text"].items()}  # (2B, L) as the stage does
    size = len(texts)

    def loss_fn(e):
        views = e["views"]
        return module.loss(views[:size], views[size:], anchor_ids=batch["text_ids"], positive_ids=batch["text_ids"])

    _assert_same(_reference(module, {"views": stacked}, loss_fn, seed=3), _cached(module, batch, seed=3))


def test_gradcache_with_lora(tiny_bert_dir, tokenizer):
    lora = {"r": 4, "alpha": 8, "dropout": 0.1}
    module = ContrastiveModule(
        EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, lora=lora), micro_batch_size=MICRO
    )
    module.configure_model()
    module.train()
    batch = _batch(tokenizer, labels=True)
    fields = {k: batch[k] for k in ("anchor", "positive")}

    def loss_fn(e):
        return module.loss(
            e["anchor"],
            e["positive"],
            labels=batch["score"],
            anchor_ids=batch["anchor_ids"],
            positive_ids=batch["positive_ids"],
        )

    reference = _reference(module, fields, loss_fn, seed=4)
    assert all("lora" in name for name in reference[1])
    _assert_same(reference, _cached(module, batch, seed=4))


def _fit(tiny_bert_dir, sts_file, tmp_path, micro, accumulate=1, batch_size=6):
    L.seed_everything(0)
    module = ContrastiveModule(
        EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, dropout=0.0),
        micro_batch_size=micro,
        loss=CoSENTLoss(),
    )
    data = PairDataModule(train=str(sts_file), tokenizer=str(tiny_bert_dir), max_length=32, batch_size=batch_size)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=1.0,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    return {k: v.detach().clone() for k, v in module.backbone.state_dict().items()}


def test_gradcache_in_a_trainer_with_accumulation_matches_plain_training(tiny_bert_dir, sts_file, tmp_path):
    """Zero-grad ordering and the 1/accumulate scaling of the in-step gradients: same weights as uncached training."""
    plain = _fit(tiny_bert_dir, sts_file, tmp_path, micro=None, accumulate=2)
    with pytest.warns(UserWarning, match="not a bigger contrastive batch"):
        cached = _fit(tiny_bert_dir, sts_file, tmp_path, micro=2, accumulate=2)
    changed = 0
    for name, value in plain.items():
        torch.testing.assert_close(cached[name], value, atol=1e-5, rtol=1e-5, msg=name)
    initial = ContrastiveModule(EncoderSettings(backbone=str(tiny_bert_dir)))
    initial.configure_model()
    changed = sum(not torch.equal(v, plain[k]) for k, v in initial.backbone.state_dict().items())
    assert changed > 10


def test_micro_batch_that_does_not_divide_the_batch_is_an_error(tiny_bert_dir, sts_file, tmp_path):
    with pytest.raises(ValueError, match="micro_batch_size=4 does not divide the data's batch_size=6"):
        _fit(tiny_bert_dir, sts_file, tmp_path, micro=4)


def test_bad_micro_batch_size_names_the_option(tiny_bert_dir):
    with pytest.raises(ValueError, match="micro_batch_size"):
        ContrastiveModule(EncoderSettings(backbone=str(tiny_bert_dir)), micro_batch_size=0)
