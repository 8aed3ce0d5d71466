"""Which scaled-dot-product-attention kernel a backbone runs on CPU: the option ``encoder.attention_kernel``.

On CPU, torch picks its flash-attention kernel whenever it applies. For the short, padded sequences of sentence
embedding and MNTP blocks its forward and backward are slower than the plain "math" kernel (two batched matmuls and a
softmax, which run on the matrix units), while long sequences favour flash (it never materialises the ``L x L``
scores). ``auto`` therefore runs math for queries up to :data:`MATH_MAX_LENGTH` tokens and flash beyond (the
crossover measured by ``benchmarks/decoder_throughput.py``); ``flash`` is torch's own choice; ``math`` always math.
Both kernels compute the same attention, so outputs agree to float rounding. CUDA is never affected.

The choice is made per attention call, inside an attention function registered with transformers'
``AttentionInterface`` (the family's SDPA function, wrapped), so every caller of the backbone (an encoder forward,
MNTP's hidden states, layer pooling) gets it, and an exception cannot leave a kernel choice behind.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

log = logging.getLogger(__name__)

ATTENTION_KERNELS = ("auto", "flash", "math")
MATH_MAX_LENGTH = 160
"""Longest query (tokens) that ``auto`` runs with the math kernel on CPU."""
ATTENTION_NAME = "lightembed_sdpa_math"
"""The ``attn_implementation`` under which the SDPA function with the CPU kernel choice is registered."""
_MATH_MAX: dict[str, int] = {"auto": MATH_MAX_LENGTH, "math": 2**62}  # kernel -> longest query run with math


def check_attention_kernel(kernel: str, option: str = "encoder.attention_kernel") -> None:
    """Raise a ``ValueError`` naming ``option`` when ``kernel`` is not one of :data:`ATTENTION_KERNELS`."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r} (option `{option}`); choose one of {ATTENTION_KERNELS}")


def sdpa_with_cpu_kernel(module: nn.Module, query: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """transformers' SDPA attention, with the math kernel on CPU when the query (``(B, heads, L, D)``) is at most
    the layer's ``lightembed_math_max_length`` tokens long."""
    longest = getattr(module, "lightembed_math_max_length", MATH_MAX_LENGTH)
    if query.device.type == "cpu" and query.shape[-2] <= longest:
        with sdpa_kernel([SDPBackend.MATH]):
            return sdpa_attention_forward(module, query, *args, **kwargs)
    return sdpa_attention_forward(module, query, *args, **kwargs)


def use_attention_kernel(model: nn.Module, kernel: str, option: str = "encoder.attention_kernel") -> bool:
    """Make ``model`` (a transformers model or a peft wrapper of one) run ``kernel`` on CPU; returns whether it does.

    ``flash`` leaves the model as it is (torch's choice). A model not on transformers' SDPA attention (``eager``, a
    custom function such as token deletion's) is left alone too: the option only chooses among SDPA kernels.
    """
    check_attention_kernel(kernel, option)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if kernel == "flash" or config is None or config._attn_implementation != "sdpa":
        return False
    if not getattr(type(base), "_supports_attention_backend", False):
        log.info("%s: %s keeps its own SDPA kernel choice", option, type(base).__name__)
        return False
    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, sdpa_with_cpu_kernel)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    for layer in base.modules():  # the threshold travels with the layers, so two models can choose differently
        layer.lightembed_math_max_length = _MATH_MAX[kernel]
    base.set_attn_implementation(ATTENTION_NAME)
    return base.config._attn_implementation == ATTENTION_NAME
