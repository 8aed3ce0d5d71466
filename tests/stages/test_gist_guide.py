"""GISTEmbed's guide in the contrastive stage: a frozen encoder whose embeddings reach the loss, never trained or saved;
and `lightembed fit` of the GISTEmbed and 2D-Matryoshka configs on a tiny model."""

# Lightning's log handler keeps the sys.stderr of its import: import it before a test's captured stderr
import lightning as L
import pytest
import torch

from lightembed.data import PairDataModule
from lightembed.data.collators import PairCollator
from lightembed.encoder import Encoder, EncoderSettings
from lightembed.losses import GISTEmbedLoss
from lightembed.stages import ContrastiveModule

ROWS = [
    {"anchor": "A man is playing a guitar.", "positive": "A man plays the guitar.", "negative": "A cat sleeps."},
    {"anchor": "A woman is slicing an onion.", "positive": "A woman cuts an onion.", "negative": "A car drives."},
    {"anchor": "Kids are playing football.", "positive": "Children play soccer.", "negative": "A bird sings."},
    {"anchor": "A plane is taking off.", "positive": "An airplane departs.", "negative": "He reads a book."},
]


def _module(tiny_bert_dir, **options) -> ContrastiveModule:
    settings = EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, dropout=0.0)
    guide = EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, pooling="cls")
    module = ContrastiveModule(settings, loss=GISTEmbedLoss(temperature=0.05), guide=guide, **options)
    module.configure_model()
    return module


def test_the_loss_gets_the_guides_embeddings_of_each_field(tiny_bert_dir, tokenizer):
    module = _module(tiny_bert_dir)
    batch = PairCollator(tokenizer, max_length=32)(ROWS)
    loss = module.training_step(batch, 0)
    guide = Encoder.from_pretrained(str(tiny_bert_dir), pooling="cls")
    student = {name: module.encoder(batch[name]) for name in ("anchor", "positive", "negative")}
    with torch.no_grad():
        guided = {f"guide_{name}": guide(batch[name]) for name in ("anchor", "positive", "negative")}
    want = module.loss(student["anchor"], student["positive"], student["negative"], **guided)
    torch.testing.assert_close(loss, want)
    # the guide's similarities matter: guided by the student itself (mean pooling), the loss differs
    by_self = {f"guide_{name}": e.detach() for name, e in student.items()}
    assert not torch.isclose(loss, module.loss(student["anchor"], student["positive"], student["negative"], **by_self))


def test_the_guide_is_frozen_and_outside_the_optimizer_and_checkpoint(tiny_bert_dir, tokenizer):
    module = _module(tiny_bert_dir, micro_batch_size=2)
    guide = module.guide
    assert guide is not None and not guide.training
    assert all(not p.requires_grad for p in guide.parameters())
    guide_ids = {id(p) for p in guide.parameters()}
    assert not guide_ids & {id(p) for p in module.parameters()}
    assert not any(k.startswith("_guide") or "guide" in k for k in module.state_dict())
    module.train()  # the stage's train mode does not switch on the guide's dropout
    assert not guide.training
    before = {n: p.clone() for n, p in guide.named_parameters()}
    module.training_step(PairCollator(tokenizer, max_length=32)(ROWS), 0).backward()  # GradCache path
    assert all(p.grad is None for p in guide.parameters())
    assert any(p.grad is not None for p in module.parameters())
    for name, value in guide.named_parameters():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert module.hparams["guide"]["pooling"] == "cls"  # plain values: the checkpoint reloads it


def test_fit_checkpoint_and_reload_leave_the_guide_out(tiny_bert_dir, fixtures_dir, tmp_path):
    module = _module(tiny_bert_dir)
    data = PairDataModule(
        train=str(fixtures_dir / "nli_tiny.jsonl"),
        train_format="nli_triplets",
        tokenizer=str(tiny_bert_dir),
        max_length=32,
        batch_size=4,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    guide_before = {n: p.clone() for n, p in module.guide.named_parameters()}
    trainer.fit(module, datamodule=data)
    [optimizer] = trainer.optimizers
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer and not in_optimizer & {id(p) for p in module.guide.parameters()}
    for name, value in module.guide.named_parameters():
        torch.testing.assert_close(value, guide_before[name], rtol=0, atol=0)
    path = tmp_path / "stage.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert state and not any("guide" in k for k in state)
    reloaded = ContrastiveModule.load_from_checkpoint(path, loss=GISTEmbedLoss(temperature=0.05))
    reloaded.configure_model()
    assert reloaded.guide is not None and reloaded.guide.settings.pooling == "cls"
    assert Encoder.from_pretrained(str(path)).settings.pooling == "mean"  # the exportable model is the student's


def test_a_trainable_guide_is_refused(tiny_bert_dir):
    from lightembed.lora import LoRASettings

    settings = EncoderSettings(backbone=str(tiny_bert_dir), max_length=32)
    guide = EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, lora=LoRASettings())
    with pytest.raises(ValueError, match="the guide is frozen"):
        ContrastiveModule(settings, loss=GISTEmbedLoss(), guide=guide)


# model config -> (data config, overrides for the tiny model: 2 layers, hidden 32)
FIT_CASES = {
    "gist": (
        "snli_triplets",
        ("--model.init_args.guide.backbone", "{tiny}", "--model.init_args.guide.max_length", "32"),
    ),
    "matryoshka_2d": (
        "stsb",
        ("--model.init_args.pool_layers", "[1, 2]", "--model.init_args.loss.init_args.dims", "[32, 16, 8]"),
    ),
}


@pytest.mark.parametrize("model", sorted(FIT_CASES))
def test_config_fits(model, tiny_bert_dir, sts_file, fixtures_dir, fit_config_two_steps):
    data, extra = FIT_CASES[model]
    train = sts_file if data == "stsb" else fixtures_dir / "nli_tiny.jsonl"
    extra = [arg.replace("{tiny}", str(tiny_bert_dir)) for arg in extra]
    cli = fit_config_two_steps(model, data, train, extra=extra)
    if model == "gist":
        assert cli.model.guide is not None and not cli.model.guide.training
