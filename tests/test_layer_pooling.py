"""Pooling several layers in one forward pass, and the contrastive stage training on them (2D-Matryoshka)."""

import pytest
import torch

from lightembed.data.collators import PairCollator
from lightembed.encoder import Encoder, EncoderSettings
from lightembed.layer_pooling import check_pool_layers, pool_layers
from lightembed.losses import AnglEObjectiveLoss, Matryoshka2dLoss
from lightembed.pooling import pool
from lightembed.stages import ContrastiveModule
from lightembed.stages.batch_embedding import GradCacheEmbedding, LengthChunkedEmbedding

ROWS = [
    {"anchor": "A man is playing a guitar.", "positive": "A man plays the guitar.", "score": 4.8},
    {"anchor": "A woman is slicing an onion.", "positive": "A woman cuts an onion.", "score": 4.5},
    {"anchor": "A cat sits on the mat.", "positive": "A dog runs in the park today.", "score": 0.4},
    {"anchor": "Kids are playing football in the big park.", "positive": "Children play soccer.", "score": 4.0},
]


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_pooled_layers_equal_pooling_each_hidden_state_by_hand(tiny_bert_dir, tokenizer, pooling):
    encoder = Encoder(EncoderSettings(backbone=str(tiny_bert_dir), pooling=pooling, max_length=32)).eval()
    features = PairCollator(tokenizer, max_length=32)(ROWS)["anchor"]
    got = pool_layers(encoder, features, [1, 2])
    assert got.shape == (4, 2, 32)
    hidden = encoder.backbone(
        input_ids=features["input_ids"], attention_mask=features["attention_mask"], output_hidden_states=True
    ).hidden_states
    for slot, k in enumerate([1, 2]):
        torch.testing.assert_close(got[:, slot], pool(hidden[k], features["attention_mask"], pooling))
    torch.testing.assert_close(got[:, -1], encoder(features))  # the last slot is the full model's embedding
    # the first slot is what the model cut to one layer returns
    cut = Encoder(EncoderSettings(backbone=str(tiny_bert_dir), pooling=pooling, max_length=32, layers=1)).eval()
    torch.testing.assert_close(got[:, 0], cut(features))


def test_pool_layers_are_checked():
    check_pool_layers(None, 6)
    check_pool_layers([2, 4, 6], 6)
    with pytest.raises(ValueError, match="at least one layer"):
        check_pool_layers([])
    with pytest.raises(ValueError, match="positive layer counts .* got 0"):
        check_pool_layers([0, 2])
    with pytest.raises(ValueError, match=r"strictly increasing, got \[4, 2\]"):
        check_pool_layers([4, 2])
    with pytest.raises(ValueError, match=r"end with the model's last layer \(6\).*got \[2, 4\]"):
        check_pool_layers([2, 4], 6)


def test_a_backbone_with_a_final_norm_is_refused(tiny_llama_dir, tokenizer):
    encoder = Encoder(EncoderSettings(backbone=str(tiny_llama_dir), pooling="mean", max_length=32))
    features = PairCollator(tokenizer, max_length=32)(ROWS)["anchor"]
    with pytest.raises(ValueError, match="final norm"):
        pool_layers(encoder, features, [1, 2])


def _module(tiny_bert_dir, **options) -> ContrastiveModule:
    loss = Matryoshka2dLoss(AnglEObjectiveLoss(), [32, 16, 8], n_layers_per_step=None, n_dims_per_step=None)
    settings = EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, dropout=0.0)
    module = ContrastiveModule(settings, loss=loss, pool_layers=[1, 2], **options)
    module.configure_model()
    return module


def test_stage_with_pool_layers_gives_the_same_step_with_gradcache_and_length_chunking(
    tiny_bert_dir, tokenizer, train_step
):
    batch = PairCollator(tokenizer, max_length=32)(ROWS)
    module = _module(tiny_bert_dir)
    plain_loss, plain = train_step(module, batch)
    # the per-layer loss really differs from the last layer's alone: the earlier layer trains too
    assert "encoder.backbone.encoder.layer.0.output.dense.weight" in plain
    for strategy in (GradCacheEmbedding(2), LengthChunkedEmbedding(0.0)):
        module.batch_embedding = strategy
        other_loss, other = train_step(module, batch)
        # float32 sums of every token's gradient, taken in another order (micro-batches, length chunks): 1e-4
        torch.testing.assert_close(other_loss, plain_loss, atol=1e-5, rtol=1e-5)
        assert other.keys() == plain.keys() and len(plain) > 10
        for name in plain:
            torch.testing.assert_close(other[name], plain[name], atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n} {m}")


def test_validation_and_encode_keep_the_full_models_embedding(tiny_bert_dir, tokenizer):
    module = _module(tiny_bert_dir)
    features = PairCollator(tokenizer, max_length=32)(ROWS)["anchor"]
    assert module.embed(features).shape == (4, 32)
    module.training_step(PairCollator(tokenizer, max_length=32)(ROWS), 0)
    assert module.embed(features).shape == (4, 32)  # the step's per-layer embedding ends with the step
    assert module.encode(["a text", "another"]).shape == (2, 32)


def test_stage_options_are_checked(tiny_bert_dir):
    settings = EncoderSettings(backbone=str(tiny_bert_dir), max_length=32)
    with pytest.raises(ValueError, match="wrap it in lightembed.losses.Matryoshka2dLoss"):
        ContrastiveModule(settings, pool_layers=[1, 2])
    loss = Matryoshka2dLoss(AnglEObjectiveLoss(), [32, 16])
    module = ContrastiveModule(settings, loss=loss, pool_layers=[1])
    with pytest.raises(ValueError, match=r"end with the model's last layer \(2\)"):
        module.configure_model()
