"""Continuous token deletion inside attention, as a transformers attention function (no module patching).

:func:`soft_deletion_attention` is registered with ``transformers.AttentionInterface`` under
:data:`ATTENTION_NAME` (and the name's mask builder with ``transformers.AttentionMaskInterface``), so any backbone
whose attention layers dispatch through ``ALL_ATTENTION_FUNCTIONS`` can use it by
``model.set_attn_implementation(ATTENTION_NAME)``: BERT-style encoders and (bidirectional) Llama-style decoders
alike. The per-token keep probabilities reach it as the forward keyword argument :data:`KEEP_KWARG`; transformers 5
passes the ``**kwargs`` of ``model(...)`` down to every attention call (``BertModel`` and ``LlamaModel`` both do).

The math. With scores ``s_ij = q_i·k_j·scale + m_ij`` (``m`` the usual additive padding/causal mask) and keep
probabilities ``p_j ∈ [0, 1]`` of the keys::

    a_ij = p_j · exp(s_ij) / Σ_k p_k · exp(s_ik) = softmax_j(s_ij + log p_j)

This is the thesis's "scale the attention probabilities by ``p[:, None, None, :]``" followed by renormalising each
row (``softmax(s) * p / Σ softmax(s) * p`` is the same quantity), and it is the formulation for which the two limits
are exact: ``p = 1`` everywhere adds ``log 1 = 0`` and gives the plain model, and ``p_j = 0`` removes key ``j``
exactly as masking it out of ``attention_mask`` does (``log 0`` is replaced by the dtype's minimum, the value the
padding mask uses). Scaling without renormalising would shrink every row by ``Σ_j softmax_j p_j`` and would not match
masking at ``p_j = 0``. The gradient with respect to ``p_j`` is ``∂a/∂log p_j / p_j``, which stays finite because
``∂a/∂log p_j ∝ a_ij ∝ p_j``; ``log`` is taken of ``p.clamp_min(tiny)`` so that ``p_j = 0`` has zero (not NaN)
gradient.

Only keys are affected: a "deleted" token still has a query and an output state (the thesis scales the key axis
only; pooling is left to the stage).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, AttentionMaskInterface, PretrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask
from transformers.models.auto.modeling_auto import MODEL_MAPPING

ATTENTION_NAME = "lightembed_soft_deletion"
"""The ``attn_implementation`` name under which :func:`soft_deletion_attention` is registered."""

KEEP_KWARG = "token_keep_probs"
"""Forward keyword argument carrying the keep probabilities ``(B, L)`` of the keys to every attention layer."""

_PROBE: ContextVar[list[int] | None] = ContextVar("lightembed_soft_deletion_probe", default=None)


def keep_bias(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive attention bias ``log p`` of keep probabilities ``keep (B, L)`` -> ``(B, 1, 1, L)`` in ``dtype``.

    ``p = 0`` maps to ``torch.finfo(dtype).min`` (the padding mask's value), ``p > 0`` to ``log p`` computed in float32
    at least; the ``clamp_min`` keeps the gradient at ``p = 0`` zero instead of NaN.
    """
    work = keep.to(torch.promote_types(keep.dtype, torch.float32))  # (B, L)
    tiny = torch.finfo(work.dtype).tiny
    log_keep = torch.log(work.clamp_min(tiny))  # (B, L)
    min_value = torch.finfo(dtype).min
    bias = torch.where(work > 0, log_keep.clamp_min(min_value), torch.full_like(log_keep, min_value))  # (B, L)
    return bias.to(dtype)[:, None, None, :]  # (B, 1, 1, L) broadcast over heads and queries


def soft_deletion_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Attention whose key axis is weighted by keep probabilities (module docstring); otherwise transformers' SDPA.

    Args:
        module: the attention layer (for ``is_causal`` and grouped-query heads, as in ``sdpa_attention_forward``).
        query: ``(B, heads, Lq, D)``.
        key: ``(B, kv_heads, Lk, D)``.
        value: ``(B, kv_heads, Lk, D)``.
        attention_mask: ``None``, a boolean ``(B, 1, Lq, Lk)`` mask (True = attend) or an additive float mask.
        dropout: attention-probability dropout.
        scaling: score scale (``D ** -0.5`` when None).
        is_causal: the model's causal flag (``config.is_causal`` of a bidirectional decoder arrives here).
        kwargs: may hold :data:`KEEP_KWARG`: keep probabilities ``(B, Lk)`` in [0, 1]; without it this is plain SDPA.

    Returns:
        ``(B, Lq, heads, D)`` attention output and ``None`` (no attention weights).
    """
    keep = kwargs.pop(KEEP_KWARG, None)
    calls = _PROBE.get()
    if calls is not None and keep is not None:
        calls.append(1)  # use_soft_deletion's check that the keyword reaches every layer
    if keep is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    batch, _, q_length, _ = query.shape
    kv_length = key.shape[2]
    if keep.shape != (batch, kv_length):
        raise ValueError(
            f"{KEEP_KWARG} must have shape (batch, keys) = {(batch, kv_length)}, got {tuple(keep.shape)} "
            "(token deletion does not support a key/value cache)"
        )
    dtype = query.dtype
    min_value = torch.finfo(dtype).min
    bias = keep_bias(keep, dtype)  # (B, 1, 1, Lk)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and causal and q_length > 1:
        # SDPA would have used is_causal=True; a mask is given now, so the causal pattern goes into it
        attention_mask = torch.ones(q_length, kv_length, dtype=torch.bool, device=query.device).tril(
            kv_length - q_length
        )[None, None]  # (1, 1, Lq, Lk)
    if attention_mask is None:
        combined = bias  # (B, 1, 1, Lk)
    elif attention_mask.dtype == torch.bool:
        combined = torch.where(attention_mask, bias, torch.full((), min_value, dtype=dtype, device=bias.device))
    else:
        combined = (attention_mask.to(dtype) + bias).clamp_min(min_value)  # (B, 1, Lq, Lk)
    combined = combined.expand(batch, 1, q_length, kv_length)  # (B, 1, Lq, Lk) a full mask for every kernel
    return sdpa_attention_forward(
        module, query, key, value, combined, dropout=dropout, scaling=scaling, is_causal=False, **kwargs
    )


def register() -> str:
    """Register the attention function and its mask builder (SDPA's boolean masks) once; returns the name."""
    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, soft_deletion_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def _unsupported(family: str, model_class: str, option: str) -> ValueError:
    return ValueError(
        f"option `{option}`: the {family!r} family ({model_class}) does not dispatch its attention through "
        "transformers' AttentionInterface, so token deletion cannot run inside its attention; use a family that "
        "does (e.g. bert, roberta, llama, qwen2)"
    )


def check_config(config: PretrainedConfig, option: str = "encoder.backbone") -> None:
    """Refuse, before loading any weights, a model family whose base model does not use the attention interface.

    Raises:
        ValueError: naming ``option`` and the family.
    """
    model_class = MODEL_MAPPING.get(type(config), None)
    if model_class is not None and not getattr(model_class, "_supports_attention_backend", False):
        raise _unsupported(config.model_type, model_class.__name__, option)


def use_soft_deletion(model: PreTrainedModel, option: str = "encoder.backbone") -> None:
    """Switch ``model`` (a transformers model, or a PEFT wrapper of one) to :func:`soft_deletion_attention`.

    Checks that the family dispatches through ``ALL_ATTENTION_FUNCTIONS`` and then that a forward pass actually hands
    :data:`KEEP_KWARG` to one attention call per layer, so a family that drops forward kwargs fails here, not with
    silently undeleted tokens.

    Raises:
        ValueError: naming ``option`` and the family, when its attention cannot take the function.
    """
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = getattr(base.config, "model_type", type(base).__name__)
    if not getattr(type(base), "_supports_attention_backend", False):
        raise _unsupported(family, type(base).__name__, option)
    base.set_attn_implementation(ATTENTION_NAME)
    if base.config._attn_implementation != ATTENTION_NAME:
        raise ValueError(
            f"option `{option}`: {type(base).__name__} ({family!r}) refused attn_implementation={ATTENTION_NAME!r} "
            f"(it kept {base.config._attn_implementation!r})"
        )
    _probe(model, family, option)


def _probe(model: nn.Module, family: str, option: str) -> None:
    """Run two tokens through ``model`` and count the attention calls that received the keep probabilities."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(base.config, "num_hidden_layers", None)
    device = next(base.parameters()).device
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)  # (1, 2)
    calls: list[int] = []
    token = _PROBE.set(calls)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), **{KEEP_KWARG: torch.ones(1, 2, device=device)})
    finally:
        _PROBE.reset(token)
    if not calls or (layers is not None and len(calls) != layers):
        raise ValueError(
            f"option `{option}`: the {family!r} family does not pass the forward keyword {KEEP_KWARG!r} to its "
            f"attention functions ({len(calls)} of {layers} layers received it), so token deletion cannot run inside "
            "its attention; use a family whose layers forward **kwargs to the attention interface (bert, llama, ...)"
        )
