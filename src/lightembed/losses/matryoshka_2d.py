"""2D-Matryoshka: train the embedding of every (layer count, prefix size) pair, so one model can be cut in depth and
width at inference."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightembed.losses.base import EmbeddingLoss
from lightembed.losses.matryoshka import MatryoshkaLoss


def _prefix(x: Tensor | None, d: int, normalize: bool) -> Tensor | None:
    """The first ``d`` coordinates ``(..., H) -> (..., d)``, scaled to unit length with ``normalize``."""
    if x is None:
        return None
    return F.normalize(x[..., :d], dim=-1) if normalize else x[..., :d]


class Matryoshka2dLoss(EmbeddingLoss):
    """2D Matryoshka Sentence Embeddings ("2D Matryoshka Sentence Embeddings", Xianming Li, Zongxi Li, Jing Li, Haoran
    Xie, Qing Li, 2024) and its layer weighting from "ESE: Espresso Sentence Embeddings" (same authors, 2024); the
    options follow sentence-transformers' ``Matryoshka2dLoss`` / ``AdaptiveLayerLoss``.

    The embeddings carry a layer axis: ``x[..., j, :]`` is the pooled output of the ``j``-th pooled layer (the
    stage's ``pool_layers``), the last slot ``K-1`` being the full model. With ``M(j) = Σ_{d ∈ D} w_d ·
    inner(anchor[..., j, :d], positive[..., j, :d], negative[..., j, :d], labels, ...)`` the Matryoshka sum at layer
    ``j`` (see :class:`MatryoshkaLoss`) and ``P`` the prior layers used this step::

        loss = last_layer_weight · M(K-1)
             + Σ_{j ∈ P} prior_layers_weight · v_j / |P| · M(j)
             + Σ_{j ∈ P} kl_weight · τ · KL( softmax(e_{K-1} / τ) ‖ softmax(e_j / τ) )

    The KL term (the papers' alignment of a shallow layer with the last, which acts as a teacher: its side is
    detached) compares, row by row over every text of the batch (anchor, positive and negative rows, batch mean),
    the softmax over the full-size embedding's coordinates, as the 2DMSE code and sentence-transformers do.

    Sampling, as the 2DMSE paper trains: the last layer is used at full weight every step; ``n_layers_per_step``
    earlier layers are drawn per step (``None``: all of them), and at each layer used the full size (largest dim)
    plus ``n_dims_per_step`` other sizes are drawn (``None``: every dim). With both ``None`` the loss is an exact,
    deterministic sum. The draws come from a generator seeded with ``seed`` and the number of calls so far, so a run
    is reproducible and every rank under DDP draws the same pairs (they must: each rank computes the same gathered
    loss).

    Inputs: whatever the inner loss takes, with each embedding argument given per layer: ``anchor (B, K, H)``,
    ``positive (B, K, H)`` or None, ``negative (B, K, H)`` or ``(B, N, K, H)`` or None, every ``H ≥ max(dims)``.
    Labels and keyword arguments (text ids, a guide's ``(B, G)`` embeddings) pass through unchanged.

    Args:
        loss: the inner loss.
        dims: prefix sizes (distinct, > 0); the largest is the full size used at every layer.
        dim_weights: ``w_d`` per dim in the order given (None: 1 each).
        n_layers_per_step: earlier layers drawn per step (``None``: all, the ESE setting; the 2DMSE paper draws 1).
        n_dims_per_step: sizes drawn per layer besides the largest (``None``: all).
        last_layer_weight: weight of the last layer's Matryoshka sum.
        prior_layers_weight: weight of the earlier layers' terms (averaged over the layers drawn).
        layer_weights: ``v_j`` per earlier layer slot ``0..K-2`` (None: 1 each, the 2DMSE paper's; ESE weighs
            shallow layers more, e.g. ``1 / (1 + ln(1 + k))`` for a slot holding the output of layer ``k``, as
            sentence-transformers' ``layer_weighting="log"``).
        kl_weight: weight of the KL alignment term (0 turns it off).
        kl_temperature: τ > 0 of the KL term's softmaxes.
        normalize: scale each prefix to unit length before the inner loss (see :class:`MatryoshkaLoss`).
        seed: seed of the layer and size draws.
    """

    def __init__(
        self,
        loss: EmbeddingLoss,
        dims: Sequence[int],
        dim_weights: Sequence[float] | None = None,
        n_layers_per_step: int | None = 1,
        n_dims_per_step: int | None = 1,
        last_layer_weight: float = 1.0,
        prior_layers_weight: float = 1.0,
        layer_weights: Sequence[float] | None = None,
        kl_weight: float = 1.0,
        kl_temperature: float = 0.3,
        normalize: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # the Matryoshka sum over sizes, validated and sorted largest first; it holds the inner loss
        self.matryoshka = MatryoshkaLoss(loss, dims, dim_weights, normalize)
        for name, n in (("n_layers_per_step", n_layers_per_step), ("n_dims_per_step", n_dims_per_step)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise ValueError(f"{name} must be a positive integer or None (all), got {n!r}")
        for name, w in (("last_layer_weight", last_layer_weight), ("prior_layers_weight", prior_layers_weight)):
            if not w >= 0:
                raise ValueError(f"{name} must be >= 0, got {w!r}")
        if not kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight!r}")
        if not kl_temperature > 0:
            raise ValueError(f"kl_temperature must be > 0, got {kl_temperature!r}")
        self.layer_weights = None if layer_weights is None else [float(w) for w in layer_weights]
        if self.layer_weights is not None and not all(w >= 0 for w in self.layer_weights):
            raise ValueError(f"layer_weights must be >= 0, got {list(layer_weights or [])}")
        self.n_layers_per_step = n_layers_per_step
        self.n_dims_per_step = n_dims_per_step
        self.last_layer_weight = float(last_layer_weight)
        self.prior_layers_weight = float(prior_layers_weight)
        self.kl_weight = float(kl_weight)
        self.kl_temperature = float(kl_temperature)
        self.seed = seed
        self.calls = 0  # draws so far: with the seed, what the next step draws

    def _draw(self, generator: torch.Generator, count: int, n: int | None) -> list[int]:
        """``n`` of ``range(count)`` without replacement, increasing (all of them when ``n`` is None or >= count)."""
        if n is None or n >= count:
            return list(range(count))
        return sorted(torch.randperm(count, generator=generator)[:n].tolist())

    def _layer_loss(
        self,
        generator: torch.Generator,
        layer: int,
        embeddings: tuple[Tensor | None, Tensor | None, Tensor | None],
        labels: Tensor | None,
        kwargs: dict[str, Tensor | None],
    ) -> Tensor:
        """``M(layer)``: the Matryoshka sum at one layer over the largest size and the sizes drawn."""
        m = self.matryoshka
        others = [1 + i for i in self._draw(generator, len(m.dims) - 1, self.n_dims_per_step)]
        anchor, positive, negative = (None if x is None else x[..., layer, :] for x in embeddings)  # (B, H) ...
        total: Tensor | None = None
        for i in [0, *others]:
            d = m.dims[i]
            cut = [_prefix(x, d, m.normalize) for x in (anchor, positive, negative)]  # (..., d) each
            term = m.weights[i] * m.loss(*cut, labels, **kwargs)
            total = term if total is None else total + term
        assert total is not None
        return total

    def _kl(self, layer: int, embeddings: tuple[Tensor | None, ...]) -> Tensor:
        """``τ · KL(softmax(last / τ) ‖ softmax(layer / τ))`` over every text row, batch mean."""
        rows = [x.flatten(0, -3) for x in embeddings if x is not None]  # (R, K, H) each
        stacked = torch.cat(rows)  # (ΣR, K, H)
        stacked = stacked.to(torch.promote_types(stacked.dtype, torch.float32))
        teacher = F.softmax(stacked[:, -1] / self.kl_temperature, dim=-1).detach()  # (ΣR, H)
        student = F.log_softmax(stacked[:, layer] / self.kl_temperature, dim=-1)  # (ΣR, H)
        return self.kl_temperature * F.kl_div(student, teacher, reduction="batchmean")

    def forward(
        self,
        anchor: Tensor,
        positive: Tensor | None = None,
        negative: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs: Tensor | None,
    ) -> Tensor:
        """Compute the loss (shapes in the class docstring). Scalar."""
        if anchor.dim() != 3:
            raise ValueError(
                f"Matryoshka2dLoss takes per-layer embeddings anchor (B, K, H), got {tuple(anchor.shape)}: set the "
                "stage's pool_layers"
            )
        layers, size = anchor.shape[-2], anchor.shape[-1]
        for name, x in (("positive", positive), ("negative", negative)):
            if x is not None and x.shape[-2:] != anchor.shape[-2:]:
                raise ValueError(
                    f"{name} must have the anchor's layers and size (..., {layers}, {size}), got {tuple(x.shape)}"
                )
        if self.matryoshka.dims[0] > size:
            raise ValueError(f"dims must be <= the embedding size {size}, got {self.matryoshka.dims[0]}")
        if self.layer_weights is not None and len(self.layer_weights) != layers - 1:
            raise ValueError(
                f"layer_weights has {len(self.layer_weights)} entries for {layers - 1} earlier layers (the "
                f"embeddings carry {layers} pooled layers, the last one weighed by last_layer_weight)"
            )
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        self.calls += 1
        embeddings = (anchor, positive, negative)
        total = self.last_layer_weight * self._layer_loss(generator, layers - 1, embeddings, labels, kwargs)
        prior = self._draw(generator, layers - 1, self.n_layers_per_step)
        for j in prior:
            weight = self.prior_layers_weight * (1.0 if self.layer_weights is None else self.layer_weights[j])
            total = total + weight / len(prior) * self._layer_loss(generator, j, embeddings, labels, kwargs)
            if self.kl_weight > 0:
                total = total + self.kl_weight * self._kl(j, embeddings)
        return total
