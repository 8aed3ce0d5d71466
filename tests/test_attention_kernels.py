"""encoder.attention_kernel: the CPU SDPA kernel choice changes speed, not outputs."""

import pytest
import torch
from torch.nn.attention import SDPBackend

from lightembed import attention_kernels
from lightembed.attention_kernels import MATH_MAX_LENGTH, check_attention_kernel
from lightembed.backbones import block_list
from lightembed.encoder import Encoder, EncoderSettings


def _features(length: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (3, length))
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, length // 2 :] = 0  # padding: the masked attention path
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_every_kernel_gives_the_same_embeddings(family, tiny_llama_dir, tiny_bert_dir):
    folder = str(tiny_llama_dir if family == "llama" else tiny_bert_dir)
    extra = {"bidirectional": True} if family == "llama" else {}
    outputs = {}
    for kernel in ("flash", "math", "auto"):
        encoder = Encoder(EncoderSettings(backbone=folder, attention_kernel=kernel, **extra)).eval()
        encoder.build()
        implementation = encoder.backbone.config._attn_implementation
        assert implementation == "sdpa"  # a saved model loads as it always did
        with torch.no_grad():
            outputs[kernel] = encoder(_features(24))
    torch.testing.assert_close(outputs["math"], outputs["flash"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs["auto"], outputs["flash"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kernel", "length", "math"),
    [("auto", 16, True), ("auto", MATH_MAX_LENGTH + 8, False), ("math", MATH_MAX_LENGTH + 8, True)],
)
def test_auto_runs_math_up_to_the_threshold(kernel, length, math, tiny_llama_dir, monkeypatch):
    chosen = []
    original = attention_kernels.sdpa_kernel

    def spy(backends):
        chosen.append(list(backends))
        return original(backends)

    monkeypatch.setattr(attention_kernels, "sdpa_kernel", spy)
    encoder = Encoder(EncoderSettings(backbone=str(tiny_llama_dir), attention_kernel=kernel, max_length=256)).eval()
    with torch.no_grad():
        encoder(_features(length))
    blocks = len(block_list(encoder.backbone)[1])
    assert chosen == ([[SDPBackend.MATH]] * blocks if math else [])  # one choice per block call


def test_lora_backbone_gets_the_kernel_too_and_an_exception_leaves_no_choice_behind(tiny_llama_dir, monkeypatch):
    from lightembed.lora import LoRASettings

    entered = []
    original = attention_kernels.sdpa_kernel
    monkeypatch.setattr(attention_kernels, "sdpa_kernel", lambda b: entered.append(b) or original(b))
    encoder = Encoder(EncoderSettings(backbone=str(tiny_llama_dir), attention_kernel="math", lora=LoRASettings(r=2)))
    with torch.no_grad():
        encoder(_features(12))
    blocks = block_list(encoder.backbone)[1]
    assert entered == [[SDPBackend.MATH]] * len(blocks)

    def fail(module, args, kwargs):
        raise RuntimeError("inside a block")

    handle = blocks[0].self_attn.o_proj.register_forward_pre_hook(fail, with_kwargs=True)
    with pytest.raises(RuntimeError, match="inside a block"), torch.no_grad():
        encoder(_features(12))
    handle.remove()
    assert torch.backends.cuda.flash_sdp_enabled()  # the math-only choice was left on the way out
    assert not any(getattr(block.self_attn, "_lightembed_sdpa_kernels", []) for block in blocks)


@pytest.mark.parametrize("kernel", ["math", "auto"])
def test_gradient_checkpointing_recomputes_with_the_kernel_of_the_forward(kernel, tiny_llama_dir):
    """Checkpointing re-runs each block in the backward pass, outside the model's forward: it must pick the same
    kernel, or its recomputed tensors differ from the saved ones and torch refuses them."""
    grads = {}
    for checkpointing in (False, True):
        settings = EncoderSettings(
            backbone=str(tiny_llama_dir),
            attention_kernel=kernel,
            bidirectional=True,
            dropout=0.0,
            gradient_checkpointing=checkpointing,
        )
        encoder = Encoder(settings).train()
        encoder(_features(16)).sum().backward()
        grads[checkpointing] = {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_an_unknown_kernel_names_the_option():
    with pytest.raises(ValueError, match="encoder.attention_kernel"):
        EncoderSettings(attention_kernel="fast")
    with pytest.raises(ValueError, match="option `x`"):
        check_attention_kernel("flash2", option="x")
