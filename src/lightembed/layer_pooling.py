"""Pool several transformer layers of one forward pass: ``(B, L)`` ids -> ``(B, K, H)``, one embedding per layer.

2D-Matryoshka training ("2D Matryoshka Sentence Embeddings", Xianming Li, Zongxi Li, Jing Li, Haoran Xie, Qing Li,
2024; "ESE: Espresso Sentence Embeddings", same authors, 2024) trains the embedding of the first ``k`` layers to work
alone, so a model cut to ``k`` layers (``EncoderSettings.layers``) can serve a smaller latency budget. The backbone
runs once with ``output_hidden_states``; ``hidden_states[k]`` is the output of layer ``k`` (``hidden_states[0]`` is
the embedding layer), which is exactly what the model cut to ``k`` layers returns as its last hidden state when the
architecture applies no extra norm after its last block (the BERT family). A backbone that does (a decoder's final
norm, ModernBERT's ``final_norm``) is refused: its cut model would embed otherwise than the layer trained here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightembed.backbones import block_list
from lightembed.encoder import MODEL_INPUTS, Encoder
from lightembed.pooling import pool
from lightembed.truncation import layer_count


def check_pool_layers(layers: Sequence[int] | None, count: int | None = None, option: str = "pool_layers") -> None:
    """Raise one clear error unless ``layers`` are increasing layer counts in ``[1, count]`` ending with ``count``
    (the full model: the loss treats the last entry as the last layer); ``None`` pools the last layer only."""
    if layers is None:
        return
    layers = list(layers)
    if not layers:
        raise ValueError(f"{option} must list at least one layer (or be null)")
    for k in layers:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{option} must hold positive layer counts (1 = the first layer), got {k!r}")
    if any(later <= earlier for earlier, later in zip(layers, layers[1:], strict=False)):
        raise ValueError(f"{option} must be strictly increasing, got {layers}")
    if count is not None and layers[-1] != count:
        raise ValueError(
            f"{option} must end with the model's last layer ({count}): the embedding at full depth is always "
            f"trained, got {layers}"
        )


def pool_layers(encoder: Encoder, features: Mapping[str, Tensor], layers: Sequence[int]) -> Tensor:
    """Embed tokenised features with ``encoder`` and pool the output of each layer count in ``layers``.

    Args:
        encoder: the model (its backbone, pooling and ``pool_mask`` handling as in :meth:`Encoder.forward`).
        features: ``{name: (B, L)}`` with ``attention_mask`` (and optionally ``pool_mask``).
        layers: increasing layer counts ending with the backbone's last layer (:func:`check_pool_layers`).

    Returns:
        ``(B, K, H)`` with ``K = len(layers)``; ``[:, -1]`` equals ``encoder(features)``.
    """
    encoder.build()
    check_pool_layers(layers, layer_count(encoder.backbone))
    inputs = {k: features[k] for k in MODEL_INPUTS if k in features}
    last_block: list[Tensor] = []
    hook = block_list(encoder.backbone)[1][-1].register_forward_hook(
        lambda module, args, out: last_block.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        output = encoder.backbone(**inputs, output_hidden_states=True)
    finally:
        hook.remove()
    hidden = output.hidden_states  # L+1 tensors (B, L, H): the embedding layer, then each block's output
    if not torch.equal(last_block[-1], output.last_hidden_state):
        raise ValueError(
            f"pool_layers: {type(encoder.backbone).__name__} changes its last block's output before returning it (a "
            "final norm), so the states of earlier layers are not what the model cut to those layers returns; "
            "2D-Matryoshka layer pooling supports backbones without a final norm (the BERT family)"
        )
    mask, pool_mask = features["attention_mask"], features.get("pool_mask")
    pooled = [pool(hidden[k], mask, encoder.pooling, pool_mask=pool_mask) for k in layers]  # K x (B, H)
    return torch.stack(pooled, dim=1)  # (B, K, H)
