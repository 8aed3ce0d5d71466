"""The MNTP stage's LM head at the masked positions only: the same loss and gradients as the head at every position,
with LoRA, gradient checkpointing, bf16 autocast and a tied or untied head."""

import contextlib

import pytest
import torch

from lightembed.data import CorpusDataModule
from lightembed.encoder import EncoderSettings
from lightembed.lora import LoRASettings
from lightembed.stages import MNTPModule

CASES = {
    "lora": ({"lora": LoRASettings(r=4, alpha=8, dropout=0.0)}, False),
    "lora-checkpointing": ({"lora": LoRASettings(r=4, alpha=8, dropout=0.0), "gradient_checkpointing": True}, False),
    "lora-bf16-autocast": ({"lora": LoRASettings(r=4, alpha=8, dropout=0.0)}, True),
    "full": ({}, False),
}


def _batch(folder, corpus_file):
    data = CorpusDataModule(
        train=str(corpus_file), objective="mntp", format="wikitext", tokenizer=str(folder), max_length=16, batch_size=4
    )
    data.setup("fit")
    torch.manual_seed(0)
    return next(iter(data.train_dataloader()))


def _loss_and_grads(module: MNTPModule, batch, bf16: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        loss, _ = module._mntp(batch)
    loss.backward()
    return loss.detach().float(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tied", [False, True], ids=["untied-head", "tied-head"])
def test_masked_head_equals_the_full_head(request, case, tied, corpus_file):
    folder = request.getfixturevalue("tiny_llama_tied_dir" if tied else "tiny_llama_dir")
    settings, bf16 = CASES[case]
    module = MNTPModule(EncoderSettings(backbone=str(folder), max_length=16, **settings))
    assert module.loss.head_positions == "masked"  # the default
    module.configure_model()
    module.train()  # no dropout is active (LoRA dropout 0, the tiny Llama's attention dropout 0): steps are exact
    with torch.no_grad():  # a fresh adapter's B is zero, which would leave A without gradient
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    batch = _batch(folder, corpus_file)
    masked_loss, masked_grads = _loss_and_grads(module, batch, bf16)
    module.loss.head_positions = "all"
    full_loss, full_grads = _loss_and_grads(module, batch, bf16)
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if bf16 else {"atol": 1e-5, "rtol": 1e-4}
    torch.testing.assert_close(masked_loss, full_loss, **tolerance)
    assert masked_grads.keys() == full_grads.keys() and masked_grads
    for name, grad in masked_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, full_grads[name], **tolerance, msg=name)


def test_head_positions_option_reaches_the_loss(tiny_llama_dir):
    module = MNTPModule(EncoderSettings(backbone=str(tiny_llama_dir), max_length=16), head_positions="all")
    assert module.loss.head_positions == "all" and module.hparams.head_positions == "all"
    with pytest.raises(ValueError, match="head_positions"):
        MNTPModule(EncoderSettings(backbone=str(tiny_llama_dir), max_length=16), head_positions="none")
