"""SimCSE with a learned token-deletion augmentation: a Gumbel-softmax proxy decides which tokens each view keeps.

A small proxy network reads the backbone's input token embeddings and gives each token a keep logit ``l``. During
training a relaxed keep decision is drawn per token with the binary Gumbel-softmax (Concrete) trick, and the sampled
keep values scale the attention paid to that token as a key in every layer and head of the encoder
(:mod:`lightembed.stages._deletion_attention`; ``keep = 0`` is exactly masking the token out of attention). The
encoder and the proxy train jointly on SimCSE's InfoNCE plus a penalty that holds the expected deletion rate near a
target. Special tokens and padding are never deleted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from transformers import AutoConfig

from lightembed.backbones import resolve_model_path
from lightembed.data.batches import Features, SentenceBatch
from lightembed.encoder import MODEL_INPUTS, EncoderSettings
from lightembed.losses import InBatchNegativesLoss
from lightembed.losses.base import EmbeddingLoss
from lightembed.pooling import pool
from lightembed.stages._deletion_attention import KEEP_KWARG, check_config, use_soft_deletion
from lightembed.stages.base import EmbeddingModule
from lightembed.stages.optim import decay_groups, default_optimizer
from lightembed.stages.simcse import two_views

TEMPERATURE_SCHEDULES = ("exponential", "linear", "constant")
MASKED_VIEWS = ("one", "both")


@dataclass
class ProxySettings:
    """The keep-logit network of :class:`TokenDeletionModule`.

    Attributes:
        hidden: width of the proxy's hidden layer.
        layers: ``0``: an MLP applied to each token embedding on its own; ``n > 0``: a light separate encoder, ``n``
            transformer layers (width ``hidden``, no position information) over the sentence's token embeddings
            before the output head, so a token's keep logit can depend on its neighbours.
        heads: attention heads of those layers (must divide ``hidden``).
        detach_embeddings: read the backbone's input embeddings without gradient (the proxy's losses then do not
            move the encoder's embedding matrix).
        lr: the proxy's learning rate (its own parameter group; the encoder uses the optimizer's).
    """

    hidden: int = 128
    layers: int = 0
    heads: int = 4
    detach_embeddings: bool = True
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ValueError(f"proxy.hidden must be positive, got {self.hidden} (option `proxy`)")
        if self.layers < 0:
            raise ValueError(f"proxy.layers must be >= 0, got {self.layers} (option `proxy`)")
        if self.layers and (self.heads < 1 or self.hidden % self.heads):
            raise ValueError(f"proxy.heads={self.heads} must divide proxy.hidden={self.hidden} (option `proxy`)")
        if not self.lr > 0:
            raise ValueError(f"proxy.lr must be > 0, got {self.lr} (option `proxy`)")


class KeepProxy(nn.Module):
    """Token embeddings ``(B, L, E)`` -> keep logits ``(B, L)``: LayerNorm, projection, optional encoder, MLP head.

    The output bias starts at ``logit(initial_keep)`` so that training starts at the target deletion rate.
    """

    def __init__(self, embedding_dim: int, settings: ProxySettings, initial_keep: float = 0.9) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embedding_dim)
        self.inp = nn.Linear(embedding_dim, settings.hidden)
        self.encoder = None
        if settings.layers:
            layer = nn.TransformerEncoderLayer(
                settings.hidden, settings.heads, 2 * settings.hidden, dropout=0.0, batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, settings.layers, enable_nested_tensor=False)
        self.act = nn.GELU()
        self.out = nn.Linear(settings.hidden, 1)
        with torch.no_grad():
            self.out.weight.mul_(0.1)  # start near the target rate for every token
            self.out.bias.fill_(math.log(initial_keep / (1 - initial_keep)))

    def forward(self, embeddings: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.inp(self.norm(embeddings))  # (B, L, hidden)
        if self.encoder is not None:
            hidden = self.encoder(hidden, src_key_padding_mask=~attention_mask.bool())  # (B, L, hidden)
        return self.out(self.act(hidden)).squeeze(-1)  # (B, L)


def relaxed_keep(logits: Tensor, temperature: float, hard: bool = False) -> Tensor:
    """Gumbel-softmax sample over {keep, delete} per token (Jang et al. 2017; Maddison et al. 2017).

    With class logits ``(l, 0)`` and Gumbel noise ``g_keep, g_del`` the softmax's keep entry is
    ``σ((l + g_keep − g_del) / τ)``; ``g_keep − g_del`` is Logistic(0, 1), drawn here as ``log u − log(1 − u)``.
    As ``τ → 0`` the sample becomes 1 with probability ``σ(l)``. ``hard=True`` returns the rounded sample in the
    forward pass and the soft sample's gradient (straight-through).

    Args:
        logits: keep logits ``(B, L)``.
        temperature: ``τ > 0``.
        hard: straight-through hard sample.

    Returns:
        keep values ``(B, L)`` in [0, 1], with gradient to ``logits``.
    """
    if not temperature > 0:
        raise ValueError(f"the Gumbel-softmax temperature must be > 0, got {temperature}")
    uniform = torch.rand_like(logits, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)  # (B, L)
    noise = torch.log(uniform) - torch.log1p(-uniform)  # (B, L) Logistic(0, 1) = g_keep - g_delete
    soft = torch.sigmoid((logits.float() + noise) / temperature)  # (B, L)
    if not hard:
        return soft
    return (soft > 0.5).float() + (soft - soft.detach())  # (B, L) exactly 0/1 forward (x - x = 0), soft gradient


def temperature_at(progress: float, start: float, end: float, schedule: str) -> float:
    """The Gumbel-softmax temperature after a fraction ``progress`` ∈ [0, 1] of training.

    ``exponential``: ``start · (end / start)^progress``; ``linear``: ``start + (end − start) · progress``;
    ``constant``: ``start``.
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "exponential":
        return start * (end / start) ** progress
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "constant":
        return start
    raise ValueError(f"unknown temperature_schedule {schedule!r}; choose one of {TEMPERATURE_SCHEDULES}")


class TokenDeletionModule(EmbeddingModule):
    """Unsupervised SimCSE whose augmentation is learned token deletion (Gumbel-softmax proxy), trained jointly.

    Each batch of sentences is encoded twice in one forward pass (stacked with itself, as in
    :class:`~lightembed.stages.SimCSEModule`). In the second half the tokens are deleted softly: the proxy's keep
    logits are sampled with :func:`relaxed_keep` at the current temperature, and the keep values weight each token as
    a key in every attention layer (``a_ij ∝ p_j · exp(s_ij)``, see :mod:`lightembed.stages._deletion_attention`).
    The first half is the plain view (dropout only) or, with ``masked_views="both"``, a second independent deletion
    sample. The loss is::

        loss = InfoNCE(view_1, view_2)  +  deletion_weight · (mean_t(1 − σ(l_t)) − target_deletion_rate)²

    where the mean runs over the deletable tokens of the batch (not special, not padding), so the penalty holds the
    proxy's *expected* deletion rate near the target; the contrastive term pushes the proxy (through the attention
    weights) towards deletions that keep the views close. The proxy and the encoder are optimised together, the proxy
    with its own learning rate (``proxy.lr``); both follow the warmup/decay schedule.

    Special tokens (the tokenizer's ``all_special_ids``: [CLS]/[SEP]/BOS/EOS/UNK...) always have keep 1, and padding is
    left to the attention mask. A row with no special token whose every token is deleted keeps its highest-logit
    token, so attention always has a key.

    Inference: ``encode`` and validation run the encoder alone (the proxy is not used) unless
    ``inference_deletion=True``, which deletes (masks out of attention) the deletable tokens whose keep probability
    ``σ(l)`` is at most ``keep_threshold``. Pooling is not changed by deletion: deletion acts on the
    attention keys only.

    Logged each step: ``train/loss``, ``train/contrastive_loss``, ``train/deletion_penalty``, ``train/temperature``,
    ``train/keep_prob_mean`` (mean ``σ(l)``), ``train/deletion_rate`` (mean ``1 − keep`` of the sampled view),
    ``train/threshold_deletion_rate`` (share with ``σ(l) ≤ keep_threshold``), ``train/keep_prob_saturated`` (share with
    ``σ(l) > 0.99``; near 1 when the proxy learns to keep every token), and with a TensorBoard logger a histogram
    ``train/keep_prob`` every ``log_every_n_steps``. Validation: STS Spearman as in every stage.

    Args:
        loss: the contrastive loss of the two views; ``None`` is ``InBatchNegativesLoss(temperature=0.05)``.
        proxy: the proxy network and its learning rate (:class:`ProxySettings`; a dict from YAML is accepted).
        target_deletion_rate: the expected share of deletable tokens to delete, in [0, 1).
        deletion_weight: weight of the deletion-rate penalty (>= 0).
        temperature_start: Gumbel-softmax temperature at the first step (> 0).
        temperature_end: temperature at the last step (> 0).
        temperature_schedule: ``exponential``, ``linear`` or ``constant`` annealing over the training steps.
        hard: straight-through hard keep/delete samples instead of soft ones.
        masked_views: ``one``: the first view is the plain (dropout) view; ``both``: both views are deleted.
        inference_deletion: at inference (eval mode), delete the tokens with keep probability <= ``keep_threshold``.
        keep_threshold: the inference threshold on ``σ(l)``, in [0, 1).
        optimizer, warmup_ratio, scheduler: see :class:`~lightembed.stages.base.EmbeddingModule` (the proxy's
            parameter groups take ``proxy.lr``).

    The encoder's ``dropout`` is every dropout rate of the backbone; ``None`` keeps the model's own (the plain
    view's augmentation).
    """

    def __init__(
        self,
        encoder: EncoderSettings,
        loss: EmbeddingLoss | None = None,
        proxy: ProxySettings | None = None,
        target_deletion_rate: float = 0.1,
        deletion_weight: float = 1.0,
        temperature_start: float = 1.0,
        temperature_end: float = 0.1,
        temperature_schedule: Literal["exponential", "linear", "constant"] = "exponential",
        hard: bool = False,
        masked_views: Literal["one", "both"] = "one",
        inference_deletion: bool = False,
        keep_threshold: float = 0.5,
        optimizer: OptimizerCallable = default_optimizer,
        warmup_ratio: float = 0.1,
        scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear",
    ) -> None:
        if not 0.0 <= target_deletion_rate < 1.0:
            raise ValueError(f"target_deletion_rate must be in [0, 1), got {target_deletion_rate}")
        if not deletion_weight >= 0:
            raise ValueError(f"deletion_weight must be >= 0, got {deletion_weight}")
        for name, value in (("temperature_start", temperature_start), ("temperature_end", temperature_end)):
            if not value > 0:
                raise ValueError(f"{name} (Gumbel-softmax temperature) must be > 0, got {value}")
        if temperature_schedule not in TEMPERATURE_SCHEDULES:
            raise ValueError(
                f"unknown temperature_schedule {temperature_schedule!r}; choose one of {TEMPERATURE_SCHEDULES}"
            )
        if masked_views not in MASKED_VIEWS:
            raise ValueError(f"masked_views must be one of {MASKED_VIEWS}, got {masked_views!r}")
        if not 0.0 <= keep_threshold < 1.0:
            raise ValueError(f"keep_threshold must be in [0, 1), got {keep_threshold}")
        if isinstance(proxy, dict):
            proxy = ProxySettings(**proxy)
        super().__init__(encoder, optimizer, warmup_ratio, scheduler)
        self.hparams["proxy"] = asdict(proxy) if proxy is not None else None  # plain values in hparams/checkpoints
        self.proxy_settings = proxy if proxy is not None else ProxySettings()
        self.loss = loss if loss is not None else InBatchNegativesLoss(temperature=0.05)
        self.target_deletion_rate = target_deletion_rate
        self.deletion_weight = deletion_weight
        self.temperature_start, self.temperature_end = temperature_start, temperature_end
        self.temperature_schedule = temperature_schedule
        self.hard = hard
        self.masked_views = masked_views
        self.inference_deletion = inference_deletion
        self.keep_threshold = keep_threshold
        self.proxy: KeepProxy | None = None
        self.register_buffer("special_ids", torch.tensor(sorted(set(self.tokenizer.all_special_ids))), persistent=False)

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Load the backbone, switch its attention to the soft-deletion function, and build the proxy (once each)."""
        if self.backbone is None:
            check_config(AutoConfig.from_pretrained(resolve_model_path(self.settings.backbone)))
            super().configure_model()
            use_soft_deletion(self.backbone)
        if self.proxy is None:
            embedding_dim = self.backbone.get_input_embeddings().embedding_dim
            initial_keep = min(max(1.0 - self.target_deletion_rate, 0.01), 0.99)
            self.proxy = KeepProxy(embedding_dim, self.proxy_settings, initial_keep).to(self.device)

    def keep_logits(self, features: Features) -> Tensor:
        """The proxy's keep logits ``(B, L)`` for tokenised ``features`` (from the backbone's input embeddings)."""
        self.configure_model()
        embeddings = self.backbone.get_input_embeddings()(features["input_ids"])  # (B, L, E)
        if self.proxy_settings.detach_embeddings:
            embeddings = embeddings.detach()
        proxy_dtype = self.proxy.out.weight.dtype
        return self.proxy(embeddings.to(proxy_dtype), features["attention_mask"]).float()  # (B, L)

    def deletable(self, features: Features) -> Tensor:
        """Which tokens may be deleted ``(B, L)`` bool: real (not padding) and not a special token."""
        ids = features["input_ids"]
        special = torch.isin(ids, self.special_ids.to(ids.device))  # (B, L)
        return features["attention_mask"].bool() & ~special  # (B, L)

    @staticmethod
    def _finish_keep(keep: Tensor, logits: Tensor, deletable: Tensor, attention_mask: Tensor) -> Tensor:
        """Set keep 1 on non-deletable tokens; a row left with no key keeps its highest-logit real token."""
        keep = torch.where(deletable, keep, torch.ones_like(keep))  # (B, L)
        alive = ((keep > 0) & attention_mask.bool()).any(dim=1)  # (B,)
        if bool(alive.all()):
            return keep
        best = logits.masked_fill(~attention_mask.bool(), float("-inf")).argmax(dim=1)  # (B,)
        rescue = torch.zeros_like(deletable).scatter_(1, best[:, None], True) & ~alive[:, None]  # (B, L)
        return torch.where(rescue, torch.ones_like(keep), keep)  # (B, L)

    def sample_keep(self, features: Features, logits: Tensor, temperature: float) -> Tensor:
        """A relaxed keep sample ``(B, L)`` for training: Gumbel-softmax on deletable tokens, 1 elsewhere."""
        soft = relaxed_keep(logits, temperature, self.hard)  # (B, L)
        return self._finish_keep(soft, logits, self.deletable(features), features["attention_mask"])

    def threshold_keep(self, features: Features) -> Tensor:
        """Hard inference keep ``(B, L)``: 0 for deletable tokens with ``σ(l) <= keep_threshold``, else 1."""
        logits = self.keep_logits(features)  # (B, L)
        keep = (torch.sigmoid(logits) > self.keep_threshold).float()  # (B, L)
        return self._finish_keep(keep, logits, self.deletable(features), features["attention_mask"])

    def embed_with_keep(self, features: Features, keep: Tensor | None) -> Tensor:
        """Encode and pool with keep values ``keep (B, L)`` weighting every token as an attention key -> ``(B, H)``."""
        self.configure_model()
        inputs = {k: features[k] for k in MODEL_INPUTS if k in features}
        if keep is not None:
            inputs[KEEP_KWARG] = keep
        hidden = self.backbone(**inputs).last_hidden_state  # (B, L, H)
        return pool(hidden, features["attention_mask"], self.settings.pooling, pool_mask=features.get("pool_mask"))

    def embed(self, features: Features) -> Tensor:
        """The encoder alone; in eval mode with ``inference_deletion``, after threshold deletion by the proxy."""
        if self.inference_deletion and not self.training:
            return self.embed_with_keep(features, self.threshold_keep(features))
        return self.embed_with_keep(features, None)

    # -------------------------------------------------------------- training
    def temperature(self) -> float:
        """The Gumbel-softmax temperature at the current step (``temperature_start`` outside a fit)."""
        total = 0
        if self._trainer is not None:
            estimated = self.trainer.estimated_stepping_batches
            total = int(estimated) if math.isfinite(estimated) else 0
        progress = self.global_step / max(total - 1, 1) if total > 1 else 0.0
        return temperature_at(progress, self.temperature_start, self.temperature_end, self.temperature_schedule)

    def training_step(self, batch: SentenceBatch, batch_idx: int) -> Tensor:
        features = batch["text"]
        size = features["input_ids"].shape[0]
        temperature = self.temperature()
        logits = self.keep_logits(features)  # (B, L)
        deletable = self.deletable(features)  # (B, L)
        keep = self.sample_keep(features, logits, temperature)  # (B, L) the deleted view
        if self.masked_views == "both":
            first_keep = self.sample_keep(features, logits, temperature)  # (B, L) an independent second sample
        else:
            first_keep = torch.ones_like(keep)  # (B, L) the plain view
        views = self.embed_with_keep(
            two_views(features), torch.cat([first_keep, keep])
        )  # (2B, H): rows i, B+i = sentence i
        first, second = views[:size], views[size:]  # (B, H), (B, H)
        ids = batch.get("text_ids")
        contrastive = self.loss(first, second, anchor_ids=ids, positive_ids=ids)

        keep_prob = torch.sigmoid(logits)  # (B, L)
        count = deletable.sum().clamp_min(1)
        expected_deletion = ((1 - keep_prob) * deletable).sum() / count  # mean over deletable tokens
        penalty = self.deletion_weight * (expected_deletion - self.target_deletion_rate) ** 2
        loss = contrastive + penalty

        with torch.no_grad():
            probs = keep_prob[deletable]  # (T,) keep probabilities of the deletable tokens
            if probs.numel() == 0:  # only special tokens in this batch: nothing could be deleted
                probs = keep_prob.new_ones(1)
            stats = {
                "train/loss": loss,
                "train/contrastive_loss": contrastive,
                "train/deletion_penalty": penalty,
                "train/temperature": temperature,
                "train/keep_prob_mean": probs.mean(),
                "train/deletion_rate": ((1 - keep) * deletable).sum() / count,
                "train/threshold_deletion_rate": (probs <= self.keep_threshold).float().mean(),
                "train/keep_prob_saturated": (probs > 0.99).float().mean(),
            }
        for name, value in stats.items():
            self.log(name, value, prog_bar=name in ("train/loss", "train/deletion_rate"), batch_size=size)
        self._log_histogram(probs)
        return loss

    def _log_histogram(self, probs: Tensor) -> None:
        """Histogram of the keep probabilities to every TensorBoard logger, every ``log_every_n_steps``."""
        if self._trainer is None or probs.numel() == 0:
            return
        if self.global_step % max(self.trainer.log_every_n_steps, 1):
            return
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_histogram("train/keep_prob", probs.float().cpu(), self.global_step)

    # -------------------------------------------------------------- optimiser
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Encoder groups (decay / no decay) at the optimizer's lr, proxy groups at ``proxy.lr``."""
        model = self.trainer.model if self._trainer is not None else self
        named = list(model.named_parameters())

        def is_proxy(name: str) -> bool:
            parts = name.split(".")
            return "proxy" in parts and "backbone" not in parts

        encoder = decay_groups((n, p) for n, p in named if not is_proxy(n))
        proxy = decay_groups(((n, p) for n, p in named if is_proxy(n)), lr=self.proxy_settings.lr, prefix="proxy/")
        return [group for group in encoder + proxy if group["params"]]

    @property
    def encoder_alone_is_exact(self) -> bool:
        """With deletion at inference, embedding needs the proxy: the encoder alone would embed otherwise."""
        return not self.inference_deletion
