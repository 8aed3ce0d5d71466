"""MNTP stage: masked next-token prediction on a decoder made bidirectional (LLM2Vec's second step)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor
from transformers import AutoModelForCausalLM

from lightembed.backbones import DTYPES, family_of, resolve_model_path
from lightembed.data.batches import MNTPBatch, PairBatch
from lightembed.encoder import MODEL_INPUTS, EncoderSettings
from lightembed.losses import MNTPLoss
from lightembed.stages.base import EmbeddingModule
from lightembed.stages.optim import default_optimizer


class MNTPModule(EmbeddingModule):
    """Train a bidirectional decoder to predict masked tokens from the previous position's output.

    "LLM2Vec: Large Language Models Are Secretly Powerful Text Encoders", BehnamGhader, Adlakha, Mosbach, Bahdanau,
    Chapados and Reddy, 2024. Batches (:class:`~lightembed.data.batches.MNTPBatch`) come from
    :class:`~lightembed.data.CorpusDataModule` with ``objective="mntp"``. The vocabulary projection is the model's
    output embedding, kept frozen: the input embedding when the model ties them (SmolLM2, Llama 3.2), else the
    ``lm_head`` weight read once from the causal-LM checkpoint. Only the base model (no head) is trained and
    exported, so the next stage starts from a plain encoder.

    Validation logs ``val/mntp_loss`` and ``val/mntp_accuracy`` on held-out text, and STS Spearman on any STS sets
    the data module adds. Following LLM2Vec, attention is bidirectional unless ``encoder.bidirectional`` is
    ``false``; LLM2Vec trains LoRA r 16 / alpha 32 / dropout 0.05 on every attention and MLP projection
    (``encoder.lora: {}`` in YAML; ``None`` trains every weight).

    Args:
        encoder: the decoder backbone and how it is loaded and adapted.
        head_positions: where the vocabulary projection is applied: ``"masked"`` only at the positions that predict
            a masked token (the loss needs no other logits), ``"all"`` at every position as a causal LM head does
            (the same loss and gradients at a higher cost; kept as the reference, see
            :class:`~lightembed.losses.MNTPLoss`).
        optimizer, warmup_ratio, scheduler: see :class:`~lightembed.stages.base.EmbeddingModule`.
    """

    def __init__(
        self,
        encoder: EncoderSettings,
        head_positions: Literal["masked", "all"] = "masked",
        optimizer: OptimizerCallable = default_optimizer,
        warmup_ratio: float = 0.1,
        scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear",
    ) -> None:
        encoder = EncoderSettings.of(encoder)
        if encoder.bidirectional is None:  # MNTP is how a decoder learns to use bidirectional attention
            encoder = dataclasses.replace(encoder, bidirectional=True)
        super().__init__(encoder, optimizer, warmup_ratio, scheduler)
        self.loss = MNTPLoss(head_positions)
        self._untied_output: Tensor | None = None

    def configure_model(self) -> None:
        if self.backbone is not None:
            return
        super().configure_model()
        config = self.backbone.config
        name = self.settings.backbone
        if family_of(config, name).kind != "decoder":
            raise ValueError(
                f"MNTP needs a decoder-only model; {name!r} is a {config.model_type} encoder "
                "(train it with the contrastive or SimCSE stage instead)"
            )
        if not getattr(config, "tie_word_embeddings", False):
            head = AutoModelForCausalLM.from_pretrained(resolve_model_path(name), dtype=DTYPES[self.settings.dtype])
            self._untied_output = head.get_output_embeddings().weight.detach().clone()
            del head

    def output_weight(self) -> Tensor:
        """The frozen ``(V, H)`` vocabulary projection."""
        if self._untied_output is not None:
            self._untied_output = self._untied_output.to(self.device)
            return self._untied_output
        return self.backbone.get_input_embeddings().weight.detach()

    def _mntp(self, batch: MNTPBatch) -> tuple[Tensor, Tensor]:
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        hidden = self.backbone(**inputs).last_hidden_state  # (B, L, H)
        return self.loss(hidden, batch["labels"], self.output_weight())

    def training_step(self, batch: MNTPBatch, batch_idx: int) -> Tensor:
        loss, accuracy = self._mntp(batch)
        size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/mntp_accuracy", accuracy, batch_size=size)
        return loss

    def validation_step(self, batch: MNTPBatch | PairBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.is_sts_loader(dataloader_idx):
            super().validation_step(batch, batch_idx, dataloader_idx)
            return
        loss, accuracy = self._mntp(batch)
        size = batch["input_ids"].shape[0]
        self.log("val/mntp_loss", loss, batch_size=size, add_dataloader_idx=False)
        self.log("val/mntp_accuracy", accuracy, batch_size=size, add_dataloader_idx=False)


__all__ = ["MNTPModule"]
