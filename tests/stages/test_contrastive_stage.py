"""ContrastiveModule: a real training loop on a tiny random BERT, STS validation metrics, encode."""

import warnings

import lightning as L
import pytest
import torch

from lightembed.data import PairDataModule
from lightembed.encoder import Encoder, EncoderSettings
from lightembed.losses import AnglEObjectiveLoss, CoSENTLoss
from lightembed.stages import ContrastiveModule


def _module(tiny_bert_dir, normalize: bool = False, dropout: float | None = None, **kwargs) -> ContrastiveModule:
    settings = EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, normalize=normalize, dropout=dropout)
    return ContrastiveModule(settings, **kwargs)


def _data(tiny_bert_dir, sts_file, **kwargs) -> PairDataModule:
    return PairDataModule(
        train=str(sts_file),
        val={"tiny": str(sts_file)},
        test={"tiny": str(sts_file)},
        tokenizer=str(tiny_bert_dir),
        max_length=32,
        batch_size=8,
        **kwargs,
    )


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


@pytest.mark.parametrize("loss", [AnglEObjectiveLoss(), CoSENTLoss()], ids=["angle", "cosent"])
def test_fit_logs_sts_metrics_and_changes_weights(tiny_bert_dir, sts_file, tmp_path, loss):
    L.seed_everything(0)
    module = _module(tiny_bert_dir, loss=loss)
    module.configure_model()
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    trainer.fit(module, datamodule=_data(tiny_bert_dir, sts_file))
    metrics = trainer.callback_metrics
    for key in ("val/tiny_spearman", "val/tiny_pearson", "val/spearman_mean", "train/loss"):
        assert key in metrics and torch.isfinite(metrics[key])
    assert -100 <= metrics["val/tiny_spearman"] <= 100
    changed = [k for k, v in module.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert "embeddings.word_embeddings.weight" in changed and len(changed) > 10


def test_training_lowers_the_loss_on_a_fixed_batch(tiny_bert_dir, sts_file):
    torch.manual_seed(0)
    module = _module(tiny_bert_dir, loss=CoSENTLoss())
    module.configure_model()
    data = _data(tiny_bert_dir, sts_file)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_validate_and_test_report_the_same_spearman_as_the_evaluator(tiny_bert_dir, sts_file, tmp_path):
    from lightembed.evaluation.sts import evaluate_sts

    module = _module(tiny_bert_dir)
    trainer = _trainer(tmp_path)
    [tested] = trainer.test(module, datamodule=_data(tiny_bert_dir, sts_file), verbose=False)
    [result] = evaluate_sts(module, {"tiny": str(sts_file)})
    assert tested["test/tiny_spearman"] == pytest.approx(result.spearman, abs=1e-3)


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_warns_with_the_fix(tiny_bert_dir, tmp_path, monkeypatch, fast_bf16):
    import lightembed.stages.checks as checks

    monkeypatch.setattr(checks, "cpu_has_fast_bf16", lambda: fast_bf16)

    def warnings_at_fit_start(precision: str) -> list[str]:
        module = _module(tiny_bert_dir)
        module.trainer = _trainer(tmp_path, precision=precision)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module.on_fit_start()
        return [str(w.message) for w in caught if "without native bf16" in str(w.message)]

    slow = warnings_at_fit_start("bf16-mixed")
    assert len(slow) == (0 if fast_bf16 else 1)
    if slow:
        assert "--trainer.precision 32-true" in slow[0]
    assert warnings_at_fit_start("32-true") == []  # fp32: no warning


def test_encode_keeps_the_input_order_and_matches_single_calls(tiny_bert_dir):
    module = _module(tiny_bert_dir)
    texts = ["a short one", "a much longer sentence than the first one is", "mid length text"]
    batch = module.encode(texts, batch_size=2)
    singles = torch.cat([module.encode([t]) for t in texts])
    assert batch.shape == (3, 32)
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=1e-5)


def test_encode_bf16_is_close_to_fp32(tiny_bert_dir):
    module = _module(tiny_bert_dir, normalize=True)
    texts = ["one sentence", "another sentence here"]
    cosine = (module.encode(texts) * module.encode(texts, precision="bfloat16")).sum(-1)
    assert torch.all(cosine > 0.99)


def test_encode_rejects_a_text_that_is_not_a_string(tiny_bert_dir):
    """Empty strings are embedded, as sentence-transformers does (tests/test_encoder.py); a non-string is refused."""
    with pytest.raises(ValueError, match="#1"):
        _module(tiny_bert_dir).encode(["fine", None])


def test_unknown_pooling_names_the_option(tiny_bert_dir):
    with pytest.raises(ValueError, match="pooling"):
        Encoder(EncoderSettings(backbone=str(tiny_bert_dir), pooling="median"))


def test_configure_model_is_idempotent(tiny_bert_dir):
    module = _module(tiny_bert_dir)
    module.configure_model()
    backbone = module.backbone
    module.configure_model()
    assert module.backbone is backbone


def test_checkpoint_reloads_with_the_same_embeddings(tiny_bert_dir, sts_file, tmp_path):
    from lightembed.api import load_encoder

    L.seed_everything(0)
    module = _module(tiny_bert_dir)
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(module, datamodule=_data(tiny_bert_dir, sts_file))
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    reloaded = load_encoder(str(ckpt))
    texts = ["a man plays guitar", "the sky is blue"]
    torch.testing.assert_close(reloaded.encode(texts), module.encode(texts))


def test_default_optimizer_is_fused_adamw_where_torch_has_the_kernel_and_steps_like_plain_adamw():
    from lightembed.stages.optim import default_optimizer

    torch.manual_seed(0)
    start = [torch.randn(6, 4), torch.randn(4)]
    grads = [torch.randn_like(p) for p in start]

    def one_step(make) -> list[torch.Tensor]:
        params = [p.clone().requires_grad_() for p in start]
        optimizer = make([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}])
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        return [p.detach() for p in params]

    fused = default_optimizer([{"params": [torch.zeros(2, requires_grad=True)]}])
    assert fused.defaults["fused"] is True
    plain = lambda groups: torch.optim.AdamW(groups, lr=2e-5, weight_decay=0.01, foreach=False)  # noqa: E731
    for ours, reference in zip(one_step(default_optimizer), one_step(plain), strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-7, rtol=1e-6)
    meta = default_optimizer([torch.zeros(2, device="meta", requires_grad=True)])  # no fused kernel there
    assert not meta.defaults["fused"]


@pytest.mark.filterwarnings("ignore:precision='bf16-mixed' on a CPU")
def test_a_fused_optimizer_is_clipped_under_bf16_mixed(tiny_bert_dir, sts_file, tmp_path):
    """Lightning refuses to clip for fused optimizers under mixed precision (a GradScaler's gradients are scaled);
    bf16 has no scaler, so the stage clips them. With SGD at lr 1 the step is the clipped gradient itself."""
    clip = 1e-3
    module = _module(
        tiny_bert_dir, optimizer=lambda params: torch.optim.SGD(params, lr=1.0, fused=True), warmup_ratio=0.0
    )
    module.configure_model()
    start = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
    trainer = _trainer(tmp_path, max_steps=1, precision="bf16-mixed", gradient_clip_val=clip, limit_val_batches=0)
    trainer.fit(module, datamodule=_data(tiny_bert_dir, sts_file))
    step = torch.cat([p.detach().flatten() for p in module.parameters()]) - start
    assert 0 < step.norm() <= clip * 1.001


def test_8bit_adamw_from_bitsandbytes_trains_with_8bit_state_and_follows_adamw(tiny_bert_dir, sts_file, tmp_path):
    """The README's memory option: `--model.init_args.optimizer bitsandbytes.optim.AdamW8bit` (CPU too).

    Compared where it means something on every CPU: parameters whose moments bitsandbytes stores in 8 bits and
    whose gradient is not about zero, and the whole model's update. A parameter with a vanishing gradient (the
    attention key bias: softmax is invariant to it) gets an lr-sized Adam step made of rounding noise, whose
    direction differs between CPU kernels (AVX2, AVX512, AMX) and between the two optimizers."""
    import bitsandbytes as bnb

    min_8bit_size = 256

    class GradientNorms(L.Callback):
        def __init__(self) -> None:
            self.largest: dict[str, float] = {}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            for name, p in pl_module.backbone.named_parameters():
                if p.grad is not None:
                    self.largest[name] = max(self.largest.get(name, 0.0), float(p.grad.norm()))

    def fit(optimizer) -> tuple[ContrastiveModule, dict[str, float]]:
        L.seed_everything(0)
        module = _module(tiny_bert_dir, optimizer=optimizer, dropout=0.0)
        norms = GradientNorms()
        trainer = _trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[norms])
        trainer.fit(module, datamodule=_data(tiny_bert_dir, sts_file))
        return module, norms.largest

    eight_bit, _ = fit(lambda params: bnb.optim.AdamW8bit(params, lr=1e-3, min_8bit_size=min_8bit_size))
    full, gradient_norms = fit(lambda params: torch.optim.AdamW(params, lr=1e-3))
    optimizer = eight_bit.trainer.optimizers[0]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    big = [optimizer.state[p] for p in params if p.numel() >= min_8bit_size]
    assert big and all(state["state1"].dtype == torch.uint8 for state in big)  # moments stored in 8 bits
    initial = _module(tiny_bert_dir)  # the weights both runs started from (loaded from the folder)
    initial.configure_model()
    typical = torch.tensor(list(gradient_norms.values())).median()
    steps8, steps32, compared = [], [], []
    for (name, p8), p32, p0 in zip(
        eight_bit.backbone.named_parameters(), full.backbone.parameters(), initial.backbone.parameters(), strict=True
    ):
        step32, step8 = (p32.detach() - p0.detach()).flatten(), (p8.detach() - p0.detach()).flatten()
        steps8.append(step8)
        steps32.append(step32)
        meaningful = gradient_norms.get(name, 0.0) > 1e-4 * typical  # not rounding noise turned into a step
        if p8.numel() >= min_8bit_size and meaningful and step32.norm() > 0:
            compared.append(name)  # quantised moments: the same update direction, close in size
            cosine = torch.nn.functional.cosine_similarity(step8, step32, dim=0)
            assert cosine > 0.9, name
            assert 0.7 < step8.norm() / step32.norm() < 1.3, name
    assert len(compared) >= len(big) // 2, compared  # most 8-bit parameters are compared one by one
    whole8, whole32 = torch.cat(steps8), torch.cat(steps32)  # (P,): every parameter, noise included
    assert torch.nn.functional.cosine_similarity(whole8, whole32, dim=0) > 0.9
    assert 0.8 < whole8.norm() / whole32.norm() < 1.25


def test_the_readme_8bit_optimizer_option_parses_and_builds(tiny_bert_dir, monkeypatch, tmp_path):
    import bitsandbytes as bnb

    from lightembed.cli import build_cli

    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        [
            *("--model.class_path", "lightembed.stages.ContrastiveModule"),
            *("--model.init_args.encoder.backbone", str(tiny_bert_dir)),
            *("--model.init_args.optimizer", "bitsandbytes.optim.AdamW8bit"),
            *("--model.init_args.optimizer.lr", "2e-5"),
            *("--data.class_path", "lightembed.data.PairDataModule", "--data.init_args.train", "x.jsonl"),
        ],
        run=False,
    )
    cli.model.configure_model()
    optimizer = cli.model.optimizer_factory(cli.model.parameters())
    assert isinstance(optimizer, bnb.optim.AdamW8bit) and optimizer.defaults["lr"] == 2e-5


def test_stage_encode_embeds_empty_strings_and_refuses_non_strings(tiny_bert_dir):
    module = _module(tiny_bert_dir, normalize=True)
    texts = ["", "A man is playing a guitar.", "  "]
    embeddings = module.encode(texts, convert_to_numpy=True)
    assert embeddings.shape == (3, 32)
    torch.testing.assert_close(torch.from_numpy(embeddings), module.encoder.encode(texts))
    with pytest.raises(ValueError, match=r"text #1 is not a string"):
        module.encode(["fine", None])


def test_predict_step_embeds_a_text_batch_as_encode_does(tiny_bert_dir):
    from lightembed.data.collators import PairCollator

    module = _module(tiny_bert_dir, normalize=True)
    texts = ["A man is playing a guitar.", "Short.", "Someone plays music on stage tonight."]
    features = PairCollator(module.tokenizer, 32).encode_texts(texts)
    module.configure_model()
    module.eval()
    with torch.no_grad():
        out = module.predict_step({"text": features, "row": torch.tensor([4, 0, 2])}, 0)
    assert out["row"].tolist() == [4, 0, 2]
    torch.testing.assert_close(out["embedding"], module.encode(texts), atol=1e-5, rtol=1e-5)


def test_training_summary_names_the_loss_its_terms_and_the_optimizer(tiny_bert_dir, sts_file):
    module = _module(tiny_bert_dir, loss=CoSENTLoss(temperature=0.05))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=_data(tiny_bert_dir, sts_file))
    summary = module.training_summary()
    assert summary["loss"] == "CoSENTLoss" and summary["loss.temperature"] == 0.05
    assert summary["optimizer"] == "AdamW" and summary["optimizer.lr"] == 2e-5
    assert [g["name"] for g in trainer.optimizers[0].param_groups] == ["decay", "no_decay"]
