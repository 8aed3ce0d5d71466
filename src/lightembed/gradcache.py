"""GradCache: a contrastive loss over a batch larger than fits in memory (Gao et al. 2021, arXiv 2101.06983).

A contrastive loss couples every row of the batch, so it cannot simply be split into micro-batches. GradCache runs
three passes:

1. **embed without graph**: each field (anchor, positive, negative ...) in micro-batches of ``m`` rows under
   ``torch.no_grad``; only the ``(B, H)`` embeddings are kept, plus the random state before each micro-batch;
2. **loss on the full batch**: the embeddings become leaves, the loss (which may all-gather across devices, see
   :mod:`lightembed.distributed`) is computed on the whole batch and ``g = ∂L/∂e`` is taken for every row;
3. **replay**: each micro-batch is embedded again *with* graph, from the same random state (so dropout draws the
   same masks as in pass 1: SimCSE's two views stay the views the loss saw), and ``Σ e · g`` is back-propagated.

Peak memory is that of one micro-batch's activations plus ``(B, H)`` embeddings, whatever ``B``; the cost is one
extra forward pass. Gradients equal those of the loss on embeddings computed with graph (up to float rounding).

Hand-off to the trainer: the replays of all micro-batches but the last run inside the training step and accumulate
into ``.grad``; :func:`cached_loss` returns a tensor whose *value* is ``L`` and whose backward (done by Lightning,
with its gradient scaling, DDP/FSDP gradient sync and clipping) replays the last micro-batch. Under DDP the in-step
backward passes run before the reducer expects gradients, so they accumulate locally and the final backward
synchronises the sum, as in DDP's ``no_sync`` gradient accumulation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import get_device_states, set_device_states

from lightembed.length_chunks import cut_rows

Features = Mapping[str, Tensor]


class RandomState:
    """The CPU and CUDA random states at one moment, to replay a forward pass with identical dropout masks."""

    def __init__(self, tensors: Features) -> None:
        self.cpu = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors.values())

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Inside the block the random state is the captured one; afterwards it is what it was before the block."""
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            set_device_states(self.devices, self.device_states)
            yield


def split_features(features: Features, micro_batch_size: int) -> list[dict[str, Tensor]]:
    """Split tokenised features ``{name: (B, L)}`` into micro-batches of ``micro_batch_size`` rows.

    Trailing columns that are padding in every row of a micro-batch are dropped (right padding only, so the
    positions of real tokens never change); the last micro-batch may be smaller.
    """
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    batch = features["attention_mask"].shape[0]
    return [cut_rows(features, slice(start, start + micro_batch_size)) for start in range(0, batch, micro_batch_size)]


def cached_loss(
    embed: Callable[[Features], Tensor],
    fields: Mapping[str, Features],
    loss_fn: Callable[[dict[str, Tensor]], Tensor],
    micro_batch_size: int,
    grad_scale: float = 1.0,
    parameters: Sequence[Tensor] = (),
) -> Tensor:
    """GradCache step: the loss of ``loss_fn({field: embed(features)})`` over the full batch, in micro-batches.

    Args:
        embed: features ``{name: (m, L)}`` -> embeddings ``(m, H)`` (the stage's encode-and-pool).
        fields: tokenised features per field, e.g. ``{"anchor": ..., "positive": ..., "negative": ...}``.
        loss_fn: embeddings per field ``{field: (B, H)}`` -> scalar loss (may gather across devices).
        micro_batch_size: rows embedded at once.
        grad_scale: factor applied to the in-step gradients, to match what the trainer applies to the returned
            loss before its backward (``1 / accumulate_grad_batches`` in Lightning).
        parameters: trainable parameters of the loss itself (e.g. a classifier head). Their gradients are taken
            with the embeddings' in pass 2 and handed to the trainer's backward through the returned value, so they
            are scaled, synchronised across devices and clipped like every other gradient.

    Returns:
        a scalar with the value of the full-batch loss. On return, the gradients of every micro-batch but the last
        have been accumulated into ``.grad``; calling ``backward()`` on the result adds the last one.
    """
    chunks = {name: split_features(features, micro_batch_size) for name, features in fields.items()}
    states: dict[str, list[RandomState]] = {name: [] for name in fields}
    cached: dict[str, Tensor] = {}
    with torch.no_grad():  # pass 1: embeddings only
        for name, parts in chunks.items():
            outputs = []
            for part in parts:
                states[name].append(RandomState(part))
                outputs.append(embed(part))  # (m, H)
            cached[name] = torch.cat(outputs)  # (B, H)

    leaves = {name: e.detach().requires_grad_(True) for name, e in cached.items()}  # pass 2: loss on the full batch
    with torch.enable_grad():
        loss = loss_fn(leaves)
        inputs = [*leaves.values(), *parameters]
        all_grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        grads = dict(zip(leaves, all_grads[: len(leaves)], strict=True))  # {field: (B, H)}
        parameter_grads = all_grads[len(leaves) :]

    work = [(name, i) for name, parts in chunks.items() for i in range(len(parts))]
    last = work[-1]
    surrogate: Tensor | None = None
    for name, i in work:  # pass 3: replay each micro-batch with graph, same random state
        start = i * micro_batch_size
        part = chunks[name][i]
        grad = grads[name][start : start + part["attention_mask"].shape[0]]  # (m, H)
        with states[name][i].replay():
            embedded = embed(part)  # (m, H)
        dot = (embedded * grad.to(embedded.dtype)).sum()  # scalar whose gradient w.r.t. embedded is `grad`
        if (name, i) == last:
            # plus Σ θ·g for the loss's own parameters: the trainer's backward gives them exactly g = ∂L/∂θ
            surrogate = dot + sum(
                ((p * g).sum() for p, g in zip(parameters, parameter_grads, strict=True) if g is not None),
                start=dot.new_zeros(()),
            )
        else:
            (dot * grad_scale).backward()
    assert surrogate is not None
    return loss.detach() + surrogate - surrogate.detach()  # value L; backward replays the last micro-batch
