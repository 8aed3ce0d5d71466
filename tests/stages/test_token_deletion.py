"""Token-deletion stage on tiny random models: the attention function's exact limits, the proxy, training, errors."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightembed.api import load_encoder
from lightembed.backbones import load_backbone
from lightembed.cli import cli_main
from lightembed.data import CorpusDataModule
from lightembed.data.collators import PairCollator
from lightembed.encoder import Encoder, EncoderSettings
from lightembed.stages import ProxySettings, TokenDeletionModule
from lightembed.stages._deletion_attention import KEEP_KWARG, soft_deletion_attention, use_soft_deletion
from lightembed.stages.token_deletion import relaxed_keep, temperature_at

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["A man is playing a guitar.", "Kids are playing football in the park today.", "The sky is blue."]
BACKBONES = ["tiny_bert_dir", "tiny_llama_dir"]


def _module(request, backbone: str, **kwargs) -> TokenDeletionModule:
    folder = request.getfixturevalue(backbone)
    bidirectional = True if backbone == "tiny_llama_dir" else None
    module = TokenDeletionModule(
        EncoderSettings(backbone=str(folder), max_length=24, bidirectional=bidirectional), **kwargs
    )
    module.configure_model()
    return module.eval()


def _reference(module: TokenDeletionModule, attn: str = "sdpa"):
    """The same backbone loaded plainly (no custom attention), with the module's (possibly trained) weights."""
    settings = module.settings
    model = load_backbone(settings.backbone, bidirectional=settings.bidirectional, attn_implementation=attn)
    model.load_state_dict(module.backbone.state_dict())
    return model.eval()


def _features(module: TokenDeletionModule) -> dict[str, torch.Tensor]:
    return PairCollator(module.tokenizer, 24).encode_texts(TEXTS)  # padded: rows have different lengths


# ------------------------------------------------------------------ the attention function
@pytest.mark.parametrize("backbone", BACKBONES)
def test_all_ones_keep_is_exactly_the_plain_model(request, backbone):
    module = _module(request, backbone)
    features = _features(module)
    assert (features["attention_mask"] == 0).any()  # padding is present
    keep = torch.ones(features["input_ids"].shape)
    with torch.no_grad():
        ours = module.backbone(**features, **{KEEP_KWARG: keep}).last_hidden_state
        plain = _reference(module, "sdpa")(**features).last_hidden_state
        eager = _reference(module, "eager")(**features).last_hidden_state
    torch.testing.assert_close(ours, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_zero_keep_equals_masking_the_token_out_of_attention(request, backbone):
    module = _module(request, backbone)
    features = _features(module)
    position = 2  # a word piece in every row (the shortest text has more than 3 tokens)
    keep = torch.ones(features["input_ids"].shape)
    keep[:, position] = 0.0
    masked = dict(features, attention_mask=features["attention_mask"].clone())
    masked["attention_mask"][:, position] = 0
    with torch.no_grad():
        ours = module.backbone(**features, **{KEEP_KWARG: keep}).last_hidden_state  # (B, L, H)
        reference = _reference(module)(**masked).last_hidden_state  # (B, L, H)
    others = masked["attention_mask"].bool()  # the remaining real tokens
    torch.testing.assert_close(ours[others], reference[others], atol=1e-6, rtol=0)
    assert not torch.allclose(ours[others], module.backbone(**features).last_hidden_state[others].detach())


def _naive_attention(q, k, v, mask, keep, scale):
    """The thesis's formulation, one query at a time: attention probabilities scaled by keep, then renormalised."""
    batch, heads, length, _ = q.shape
    out = torch.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                scores = torch.tensor([float(q[b, h, i] @ k[b, h, j]) * scale for j in range(length)])
                scores = scores.masked_fill(~mask[b, 0, i], float("-inf"))
                probs = torch.softmax(scores, dim=0) * keep[b]  # scale the probabilities of the keys
                probs = probs / probs.sum()  # renormalise
                out[b, h, i] = probs @ v[b, h]
    return out.transpose(1, 2)  # (B, L, heads, D) like the attention interface


def test_attention_function_matches_a_naive_loop_of_scaled_probabilities():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, :, :, 4] = False  # padding key in row 1
    keep = torch.rand(2, 5, dtype=torch.float64)
    keep[0, 1] = 0.0
    module = torch.nn.Module()
    module.is_causal = False
    ours, _ = soft_deletion_attention(module, q, k, v, mask, scaling=0.5, **{KEEP_KWARG: keep})
    torch.testing.assert_close(ours, _naive_attention(q, k, v, mask, keep, 0.5))


# ------------------------------------------------------------------ the proxy and the sampling
def test_relaxed_keep_follows_the_keep_probability_and_hard_is_straight_through():
    torch.manual_seed(0)
    logits = torch.tensor([-2.0, 0.0, 1.5]).repeat(20000, 1).requires_grad_()  # (N, 3)
    soft = relaxed_keep(logits, temperature=0.05)
    torch.testing.assert_close((soft > 0.5).float().mean(0), torch.sigmoid(logits[0]).detach(), atol=0.02, rtol=0)
    hard = relaxed_keep(logits, temperature=0.5, hard=True)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    hard.sum().backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        relaxed_keep(logits, temperature=0.0)


def test_temperature_schedules():
    assert temperature_at(0.0, 1.0, 0.1, "exponential") == pytest.approx(1.0)
    assert temperature_at(0.5, 1.0, 0.1, "exponential") == pytest.approx(0.1**0.5)
    assert temperature_at(1.0, 1.0, 0.1, "exponential") == pytest.approx(0.1)
    assert temperature_at(0.5, 1.0, 0.2, "linear") == pytest.approx(0.6)
    assert temperature_at(0.7, 1.0, 0.2, "constant") == 1.0


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_gradients_reach_every_proxy_parameter_through_the_contrastive_loss(request, backbone, hard):
    torch.manual_seed(0)
    settings = ProxySettings(hidden=16, layers=1, heads=2)
    module = _module(request, backbone, proxy=settings, hard=hard, deletion_weight=0.0, target_deletion_rate=0.5)
    module.train()
    features = _features(module)
    loss = module.training_step({"text": features, "text_ids": torch.arange(len(TEXTS))}, 0)
    loss.backward()
    for name, param in module.proxy.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert module.backbone.get_input_embeddings().weight.grad is not None  # the encoder trains too


@pytest.mark.parametrize("backbone", BACKBONES)
def test_special_tokens_and_padding_are_never_deleted(request, backbone):
    module = _module(request, backbone, keep_threshold=0.9)
    with torch.no_grad():
        module.proxy.out.bias.fill_(-30.0)  # the proxy wants to delete everything
    features = _features(module)
    special = torch.isin(features["input_ids"], torch.tensor(module.tokenizer.all_special_ids))
    padding = features["attention_mask"] == 0
    assert special.any() and padding.any()
    logits = module.keep_logits(features)
    for keep in (module.sample_keep(features, logits, 0.1), module.threshold_keep(features)):
        assert torch.equal(keep[special | padding], torch.ones(int((special | padding).sum())))
        assert keep[module.deletable(features)].max() < 1e-3
    assert torch.equal(module.deletable(features), ~(special | padding))


def test_a_row_without_special_tokens_keeps_one_token(request):
    module = _module(request, "tiny_bert_dir", keep_threshold=0.9)
    with torch.no_grad():
        module.proxy.out.bias.fill_(-30.0)
    ids = torch.tensor([[2000, 2001, 2002], [2003, 2004, 0]])
    features = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    keep = module.threshold_keep(features)
    assert torch.equal((keep * features["attention_mask"]).sum(1), torch.ones(2))
    assert torch.isfinite(module.embed_with_keep(features, keep)).all()


def test_inference_deletion_masks_the_tokens_below_the_threshold(request):
    module = _module(request, "tiny_bert_dir", inference_deletion=True, keep_threshold=0.95)  # initial keep 0.9
    features = _features(module)
    masked = dict(features, attention_mask=features["attention_mask"] * (~module.deletable(features)).long())
    with torch.no_grad():
        ours = module.embed(features)
        hidden = _reference(module)(**masked).last_hidden_state
    from lightembed.pooling import pool

    torch.testing.assert_close(ours, pool(hidden, features["attention_mask"], "mean"), atol=1e-6, rtol=0)
    module.inference_deletion = False
    assert not torch.allclose(module.embed(features), ours)


def test_a_checkpoint_with_inference_deletion_is_not_loaded_as_the_encoder_alone(request, tmp_path):
    module = _module(request, "tiny_bert_dir", inference_deletion=True)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(module)
    checkpoint = tmp_path / "td.ckpt"
    trainer.save_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="TokenDeletionModule.*load_from_checkpoint"):
        load_encoder(str(checkpoint))


def test_encode_uses_the_encoder_alone(request, tmp_path):
    module = _module(request, "tiny_bert_dir")
    module.backbone.save_pretrained(tmp_path)
    module.tokenizer.save_pretrained(tmp_path)
    plain = load_encoder(str(tmp_path), pooling="mean", max_length=24)
    torch.testing.assert_close(module.encode(TEXTS), plain.encode(TEXTS), atol=1e-6, rtol=0)


def test_proxy_and_encoder_get_their_own_learning_rates(request):
    module = _module(request, "tiny_bert_dir", proxy={"lr": 5e-3})
    groups = module.parameter_groups()
    proxy_ids = {id(p) for p in module.proxy.parameters()}
    for group in groups:
        in_proxy = {id(p) in proxy_ids for p in group["params"]}
        assert len(in_proxy) == 1
        assert (group.get("lr") == 5e-3) == in_proxy.pop()
    assert sum(len(g["params"]) for g in groups) == len(list(module.parameters()))


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"target_deletion_rate": 1.0}, "target_deletion_rate"),
        ({"target_deletion_rate": -0.1}, "target_deletion_rate"),
        ({"temperature_start": 0.0}, "temperature_start"),
        ({"temperature_end": -1.0}, "temperature_end"),
        ({"temperature_schedule": "cosine"}, "temperature_schedule"),
        ({"keep_threshold": 1.0}, "keep_threshold"),
        ({"masked_views": "three"}, "masked_views"),
        ({"deletion_weight": -1.0}, "deletion_weight"),
        ({"proxy": {"lr": 0.0}}, "proxy"),
        ({"proxy": {"hidden": 10, "layers": 1, "heads": 4}}, "proxy"),
    ],
)
def test_bad_options_name_themselves(tiny_bert_dir, kwargs, option):
    with pytest.raises(ValueError, match=option):
        TokenDeletionModule(EncoderSettings(backbone=str(tiny_bert_dir)), **kwargs)


def test_a_family_without_the_attention_interface_is_an_error(tmp_path, tokenizer):
    from transformers import MPNetConfig, MPNetModel

    config = MPNetConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    MPNetModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="option `encoder.backbone`.*mpnet.*AttentionInterface"):
        TokenDeletionModule(EncoderSettings(backbone=str(tmp_path))).configure_model()


def test_a_model_that_drops_the_keep_keyword_is_an_error():
    from transformers import BertConfig, BertModel

    class DroppingBert(BertModel):
        def forward(self, *args, **kwargs):
            kwargs.pop(KEEP_KWARG, None)
            return super().forward(*args, **kwargs)

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    with pytest.raises(ValueError, match="option `encoder.backbone`.*0 of 2 layers"):
        use_soft_deletion(DroppingBert(config))
    use_soft_deletion(BertModel(config))  # the unmodified family passes


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("views", ["one", "both"])
def test_the_stage_trains_logs_and_reloads(request, backbone, views, corpus_file, sts_file, tmp_path):
    folder = request.getfixturevalue(backbone)
    L.seed_everything(0)
    bidirectional = True if backbone == "tiny_llama_dir" else None
    module = TokenDeletionModule(
        EncoderSettings(backbone=str(folder), max_length=24, bidirectional=bidirectional, dropout=0.1),
        masked_views=views,
        temperature_start=2.0,
        temperature_end=0.5,
        proxy=ProxySettings(hidden=16, lr=1e-2),
    )
    data = CorpusDataModule(
        train=str(corpus_file),
        sts_val={"tiny": str(sts_file)},
        objective="simcse",
        format="wikitext",
        tokenizer=str(folder),
        max_length=24,
        batch_size=8,
    )
    logger = TensorBoardLogger(tmp_path, name="td")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        logger=logger,
        log_every_n_steps=1,
        max_epochs=1,
        limit_train_batches=3,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    for key in (
        "train/loss",
        "train/contrastive_loss",
        "train/deletion_penalty",
        "train/deletion_rate",
        "train/keep_prob_mean",
        "train/threshold_deletion_rate",
        "train/keep_prob_saturated",
        "val/tiny_spearman",
    ):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert 0 < float(metrics["train/deletion_rate"]) < 1
    assert float(metrics["train/temperature"]) == pytest.approx(0.5)  # annealed to the end value at the last step

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0})
    events.Reload()
    assert "train/keep_prob" in events.Tags()["histograms"]

    checkpoint = tmp_path / "td.ckpt"
    trainer.save_checkpoint(checkpoint)
    reloaded = TokenDeletionModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    torch.testing.assert_close(reloaded.proxy.out.weight, module.proxy.out.weight)
    torch.testing.assert_close(reloaded.encode(TEXTS), module.encode(TEXTS), atol=1e-6, rtol=0)
    encoder = load_encoder(str(checkpoint))  # without inference deletion the encoder alone embeds as the stage
    assert isinstance(encoder, Encoder)
    torch.testing.assert_close(encoder.encode(TEXTS), module.encode(TEXTS), atol=1e-6, rtol=0)


def test_the_shipped_config_fits_through_the_cli(tiny_bert_dir, corpus_file, sts_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/trainer/cpu.yaml"),
            "--config",
            str(ROOT / "configs/stages/token_deletion_minilm.yaml"),
            "--model.init_args.encoder.backbone",
            str(tiny_bert_dir),
            "--data.init_args.train",
            str(corpus_file),
            "--data.init_args.sts_val",
            json.dumps({"stsb": str(sts_file)}),
            "--data.init_args.batch_size",
            "8",
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "2",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    run = tmp_path / "checkpoints" / "token_deletion_minilm" / "version_0"
    [best] = (run / "checkpoints").glob("best-*.ckpt")
    assert (run / "export" / "modules.json").is_file()
    from_checkpoint = TokenDeletionModule.load_from_checkpoint(best, map_location="cpu").eval()  # proxy restored
    exported = load_encoder(str(run / "export"))  # the encoder alone, plain attention
    assert type(exported).__name__ == "Encoder"
    assert exported.backbone.config._attn_implementation == "sdpa"
    torch.testing.assert_close(exported.encode(TEXTS), from_checkpoint.encode(TEXTS), atol=1e-5, rtol=0)
