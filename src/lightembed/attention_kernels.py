"""Which scaled-dot-product-attention kernel a backbone runs on CPU: the option ``encoder.attention_kernel``.

On CPU, torch picks its flash-attention kernel whenever it applies. For the short, padded sequences of sentence
embedding and MNTP blocks its forward and backward are slower than the plain "math" kernel (two batched matmuls and a
softmax, which run on the matrix units), while long sequences favour flash (it never materialises the ``L x L``
scores). ``auto`` therefore runs math for queries up to :data:`MATH_MAX_LENGTH` tokens and flash beyond (the
crossover measured by ``benchmarks/decoder_throughput.py``); ``flash`` is torch's own choice; ``math`` always math.
Both kernels compute the same attention, so outputs agree to float rounding. CUDA is never affected.

The choice is made per call of each block's attention module, from its input's sequence length, by a forward
pre-hook that enters ``torch.nn.attention.sdpa_kernel`` and a forward hook (``always_call``: also after an exception)
that leaves it, so every caller of the backbone (an encoder forward, MNTP's hidden states, layer pooling) gets it and
the model keeps ``attn_implementation="sdpa"`` (a saved model is unchanged). Hooks on the attention modules, not on
the model or its blocks: gradient checkpointing recomputes a block's ``forward`` in the backward pass, with the
block's own hooks left out (transformers checkpoints ``forward``, not ``__call__``), and the recompute must run the
kernel the forward ran, or its saved tensors differ and checkpointing refuses them. The attention module is called
inside the block's ``forward``, so its hooks run in the recompute too.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightembed.backbones import block_list

log = logging.getLogger(__name__)

ATTENTION_KERNELS = ("auto", "flash", "math")
MATH_MAX_LENGTH = 160
"""Longest sequence (tokens) that ``auto`` runs with the math kernel on CPU."""
_MATH_MAX: dict[str, int] = {"auto": MATH_MAX_LENGTH, "math": 2**62}  # kernel -> longest sequence run with math
_ACTIVE = "_lightembed_sdpa_kernels"  # per-module stack of the contexts entered by the pre-hook (None: none entered)


def check_attention_kernel(kernel: str, option: str = "encoder.attention_kernel") -> None:
    """Raise a ``ValueError`` naming ``option`` when ``kernel`` is not one of :data:`ATTENTION_KERNELS`."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r} (option `{option}`); choose one of {ATTENTION_KERNELS}")


def _enter(longest: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    hidden = kwargs.get("hidden_states", args[0] if args else None)  # the attention's input: (B, L, H)
    context: AbstractContextManager | None = None
    if isinstance(hidden, torch.Tensor) and hidden.device.type == "cpu" and hidden.shape[1] <= longest:
        context = sdpa_kernel([SDPBackend.MATH])
        context.__enter__()
    module.__dict__.setdefault(_ACTIVE, []).append(context)


def _leave(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    context = module.__dict__[_ACTIVE].pop()
    if context is not None:
        context.__exit__(None, None, None)


def _attention_of(block: nn.Module) -> nn.Module:
    """The outermost sub-module of a transformer block whose class is an attention (``LlamaAttention``,
    ``BertAttention``), found by class name as transformers names them in every family."""
    for name, module in block.named_modules():
        if name and type(module).__name__.endswith("Attention"):
            return module
    raise ValueError(f"{type(block).__name__} has no sub-module whose class name ends in 'Attention'")


def use_attention_kernel(model: nn.Module, kernel: str, option: str = "encoder.attention_kernel") -> bool:
    """Make ``model`` (a transformers model or a peft wrapper of one) run ``kernel`` on CPU; returns whether it does.

    ``flash`` leaves the model as it is (torch's choice). A model not on transformers' SDPA attention (``eager``, a
    custom function) is left alone too: the option only chooses among SDPA kernels.
    """
    check_attention_kernel(kernel, option)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if kernel == "flash" or getattr(getattr(base, "config", None), "_attn_implementation", None) != "sdpa":
        return False
    for block in block_list(base)[1]:
        attention = _attention_of(block)
        attention.register_forward_pre_hook(partial(_enter, _MATH_MAX[kernel]), with_kwargs=True)
        attention.register_forward_hook(_leave, always_call=True)
    log.debug("%s=%s: math SDPA kernel on CPU up to %d tokens", option, kernel, _MATH_MAX[kernel])
    return True
