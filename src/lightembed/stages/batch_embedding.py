"""How a contrastive stage embeds the fields of a batch before its loss: one part a stage composes.

* :class:`PlainEmbedding`: one forward pass per field, with graph.
* :class:`LengthChunkedEmbedding`: the texts of every field together, in length-sorted chunks each padded only to
  its own longest text (:mod:`lightembed.length_chunks`): the same embeddings, less padding.
* :class:`GradCacheEmbedding`: micro-batches without graph, the loss on the whole batch, then a replay with graph
  (:mod:`lightembed.gradcache`): a contrastive batch larger than memory.

Each takes ``embed`` (features -> ``(B, H)``), the batch's fields (``{"anchor": features, ...}``), ``loss_fn``
(``{field: (B, H)}`` -> scalar) and the loss's own trainable parameters (GradCache must route their gradients), and
returns the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

from lightembed import gradcache
from lightembed.data.batches import Features
from lightembed.length_chunks import embed_by_length

Embed = Callable[[Features], Tensor]
LossFn = Callable[[dict[str, Tensor]], Tensor]


class PlainEmbedding:
    """One forward pass per field."""

    accumulates_gradients = False  # the training step itself calls backward on nothing

    def __call__(
        self,
        embed: Embed,
        fields: Mapping[str, Features],
        loss_fn: LossFn,
        grad_scale: float = 1.0,
        parameters: Sequence[Tensor] = (),
    ) -> Tensor:
        return loss_fn({name: embed(features) for name, features in fields.items()})


class LengthChunkedEmbedding:
    """Every field's texts in length-sorted chunks; ``cost`` is one more chunk's price in padded tokens."""

    accumulates_gradients = False

    def __init__(self, cost: float) -> None:
        if cost < 0:
            raise ValueError(f"length_chunking is a per-chunk cost in tokens: >= 0 (or None), got {cost}")
        self.cost = cost

    def __call__(
        self,
        embed: Embed,
        fields: Mapping[str, Features],
        loss_fn: LossFn,
        grad_scale: float = 1.0,
        parameters: Sequence[Tensor] = (),
    ) -> Tensor:
        return loss_fn(embed_by_length(embed, fields, self.cost))


class GradCacheEmbedding:
    """GradCache in micro-batches of ``micro_batch_size`` rows.

    The replays of all micro-batches but the last back-propagate inside the training step, so the stage must zero
    the gradients before the step instead of after it (``accumulates_gradients``); ``grad_scale`` is the factor
    Lightning applies to the returned loss (``1 / accumulate_grad_batches``), applied to those in-step gradients.
    """

    accumulates_gradients = True

    def __init__(self, micro_batch_size: int) -> None:
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 (or None), got {micro_batch_size}")
        self.micro_batch_size = micro_batch_size

    def __call__(
        self,
        embed: Embed,
        fields: Mapping[str, Features],
        loss_fn: LossFn,
        grad_scale: float = 1.0,
        parameters: Sequence[Tensor] = (),
    ) -> Tensor:
        return gradcache.cached_loss(
            embed, fields, loss_fn, self.micro_batch_size, grad_scale=grad_scale, parameters=parameters
        )


BatchEmbedding = PlainEmbedding | LengthChunkedEmbedding | GradCacheEmbedding


def batch_embedding(micro_batch_size: int | None = None, length_chunking: float | None = None) -> BatchEmbedding:
    """The strategy the stage options ask for (at most one of them)."""
    if length_chunking is not None and micro_batch_size is not None:
        raise ValueError(
            "set either length_chunking or micro_batch_size: GradCache embeds fixed micro-batches (each already "
            "cut to its own longest text)"
        )
    if micro_batch_size is not None:
        return GradCacheEmbedding(micro_batch_size)
    if length_chunking is not None:
        return LengthChunkedEmbedding(length_chunking)
    return PlainEmbedding()
