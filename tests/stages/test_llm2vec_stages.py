"""MNTP and SimCSE stages on tiny random models: real training loops, validation metrics, errors."""

import json

import lightning as L
import pytest
import torch

from lightembed.data import CorpusDataModule
from lightembed.encoder import EncoderSettings
from lightembed.lora import LoRASettings
from lightembed.stages import MNTPModule, SimCSEModule


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


@pytest.mark.parametrize("tied", [False, True], ids=["untied-head", "tied-head"])
def test_mntp_trains_lora_and_reports_masked_accuracy(request, tied, corpus_file, sts_file, tmp_path):
    folder = request.getfixturevalue("tiny_llama_tied_dir" if tied else "tiny_llama_dir")
    L.seed_everything(0)
    module = MNTPModule(EncoderSettings(backbone=str(folder), max_length=16, lora=LoRASettings(r=4, alpha=8)))
    data = CorpusDataModule(
        train=str(corpus_file),
        val=str(corpus_file),
        sts_val={"tiny": str(sts_file)},
        objective="mntp",
        format="wikitext",
        tokenizer=str(folder),
        max_length=16,
        batch_size=4,
    )
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=2)
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "val/mntp_loss", "val/mntp_accuracy", "val/tiny_spearman"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert module.backbone.config.is_causal is False
    assert all("lora_" in n for n, p in module.named_parameters() if p.requires_grad)


def test_mntp_loss_equals_the_hf_causal_lm_loss_on_the_same_labels(tiny_llama_dir, corpus_file):
    """HF's causal-LM loss also reads token i from logits i-1: with the same (bidirectional) model they must agree."""
    from transformers import AutoModelForCausalLM

    from lightembed.backbones import set_bidirectional

    module = MNTPModule(EncoderSettings(backbone=str(tiny_llama_dir), max_length=16))
    module.configure_model()
    module.eval()
    data = CorpusDataModule(
        train=str(corpus_file),
        objective="mntp",
        format="wikitext",
        tokenizer=str(tiny_llama_dir),
        max_length=16,
        batch_size=4,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    set_bidirectional(reference, True)
    with torch.no_grad():
        ours, _ = module._mntp(batch)
        theirs = reference(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_mntp_refuses_an_encoder(tiny_bert_dir):
    with pytest.raises(ValueError, match="decoder"):
        MNTPModule(EncoderSettings(backbone=str(tiny_bert_dir))).configure_model()


@pytest.mark.parametrize("backbone", ["tiny_bert_dir", "tiny_llama_dir"])
def test_simcse_trains_and_validates_on_sts(request, backbone, corpus_file, sts_file, tmp_path):
    folder = request.getfixturevalue(backbone)
    L.seed_everything(0)
    bidirectional = True if backbone == "tiny_llama_dir" else None
    module = SimCSEModule(
        EncoderSettings(backbone=str(folder), max_length=24, dropout=0.3, bidirectional=bidirectional)
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
    module.configure_model()
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=3)
    trainer.fit(module, datamodule=data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert torch.isfinite(trainer.callback_metrics["val/tiny_spearman"])
    assert any(not torch.equal(v, before[k]) for k, v in module.backbone.state_dict().items())


def test_simcse_views_differ_only_through_dropout(tiny_bert_dir, corpus_file):
    module = SimCSEModule(EncoderSettings(backbone=str(tiny_bert_dir), max_length=24, dropout=0.2))
    data = CorpusDataModule(
        train=str(corpus_file),
        objective="simcse",
        format="wikitext",
        tokenizer=str(tiny_bert_dir),
        max_length=24,
        batch_size=4,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.configure_model()
    module.train()
    a, b = module.embed(batch["text"]), module.embed(batch["text"])
    assert not torch.allclose(a, b)
    module.eval()
    torch.testing.assert_close(module.embed(batch["text"]), module.embed(batch["text"]))


def test_simcse_without_dropout_is_an_error(tiny_llama_dir):
    with pytest.raises(ValueError, match="dropout"):
        SimCSEModule(EncoderSettings(backbone=str(tiny_llama_dir))).configure_model()


def test_dropout_option_reaches_the_config(tiny_llama_dir, tiny_bert_dir):
    llama = SimCSEModule(EncoderSettings(backbone=str(tiny_llama_dir), dropout=0.3))
    llama.configure_model()
    assert llama.backbone.config.attention_dropout == 0.3
    bert = SimCSEModule(EncoderSettings(backbone=str(tiny_bert_dir), dropout=0.25))
    bert.configure_model()
    config = bert.backbone.config
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob) == (0.25, 0.25)
    assert json.loads(config.to_json_string())["hidden_dropout_prob"] == 0.25


def test_lora_checkpoint_holds_only_the_adapter_and_reloads_exactly(tiny_llama_dir, corpus_file, tmp_path):
    from lightembed.api import load_encoder

    L.seed_everything(0)
    module = MNTPModule(EncoderSettings(backbone=str(tiny_llama_dir), max_length=16, lora=LoRASettings(r=4, alpha=8)))
    data = CorpusDataModule(
        train=str(corpus_file), objective="mntp", format="wikitext", tokenizer=str(tiny_llama_dir), max_length=16
    )
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    ckpt = tmp_path / "adapter.ckpt"
    trainer.save_checkpoint(ckpt)

    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(saved) == trainable and all("lora_" in n for n in saved)
    assert len(saved) < len(module.state_dict())

    # the frozen base comes back from `model`, the adapter from the checkpoint, and strict loading still holds
    texts = ["a man plays guitar", "the sky is blue"]
    torch.testing.assert_close(load_encoder(str(ckpt)).encode(texts), module.encode(texts))
    # resuming a fit restores the adapter too (configure_model runs before the state is loaded)
    resumed = MNTPModule(EncoderSettings(backbone=str(tiny_llama_dir), max_length=16, lora=LoRASettings(r=4, alpha=8)))
    _trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(resumed, datamodule=data, ckpt_path=ckpt)
    for name, value in module.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)


def test_lora_stage_exports_from_its_adapter_only_best_checkpoint(tiny_llama_dir, corpus_file, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightembed.api import load_encoder
    from lightembed.callbacks import ExportCallback

    L.seed_everything(0)
    module = MNTPModule(EncoderSettings(backbone=str(tiny_llama_dir), max_length=16, lora=LoRASettings(r=4, alpha=8)))
    data = CorpusDataModule(
        train=str(corpus_file), objective="mntp", format="wikitext", tokenizer=str(tiny_llama_dir), max_length=16
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=1)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[checkpoint, ExportCallback(folder=str(tmp_path / "export"))],
    )
    trainer.fit(module, datamodule=data)
    assert checkpoint.best_model_path
    texts = ["a man plays guitar", "the sky is blue"]
    torch.testing.assert_close(load_encoder(str(tmp_path / "export")).encode(texts), module.encode(texts))
