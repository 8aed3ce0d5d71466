"""MNTP stage: masked next-token prediction on a decoder made bidirectional (LLM2Vec step 2)."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers import AutoModelForCausalLM

from lightembed.backbones import DTYPES, family_of, resolve_model_path
from lightembed.losses import MNTPLoss
from lightembed.stages.base import MODEL_INPUTS, EmbeddingModule


class MNTPModule(EmbeddingModule):
    """Train a bidirectional decoder to predict masked tokens from the previous position's output (LLM2Vec).

    Batches come from :class:`~lightembed.data.CorpusDataModule` with ``objective="mntp"``: ``input_ids``,
    ``attention_mask`` and ``labels`` (original ids at masked positions, -100 elsewhere). The vocabulary projection
    is the model's output embedding, kept frozen: the input embedding when the model ties them (SmolLM2, Llama 3.2),
    else the ``lm_head`` weight read once from the causal-LM checkpoint. Only the base model (no head) is trained and
    exported, so the next stage starts from a plain encoder.

    Validation logs ``val/mntp_loss`` and ``val/mntp_accuracy`` on held-out text, and STS Spearman on any STS sets
    the data module adds. Defaults follow LLM2Vec: bidirectional attention, LoRA r 16 / alpha 32 / dropout 0.05 on
    every attention and MLP projection (set ``lora: {}`` in YAML; ``None`` trains every weight).

    Args: see :class:`~lightembed.stages.base.EmbeddingModule`.
    """

    def __init__(
        self,
        model: str = "packaged:SmolLM2-135M-Instruct",
        max_length: int = 512,
        bidirectional: bool | None = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model=model,
            max_length=max_length,
            bidirectional=bidirectional,
            **kwargs,
        )
        self.loss = MNTPLoss()
        self._untied_output: Tensor | None = None

    def configure_model(self) -> None:
        if self.backbone is not None:
            return
        super().configure_model()
        config = self.backbone.config
        if family_of(config, self.model_name).kind != "decoder":
            raise ValueError(
                f"MNTP needs a decoder-only model; {self.model_name!r} is a {config.model_type} encoder "
                "(train it with the contrastive or SimCSE stage instead)"
            )
        if not getattr(config, "tie_word_embeddings", False):
            head = AutoModelForCausalLM.from_pretrained(
                resolve_model_path(self.model_name), dtype=DTYPES[self.hparams.dtype]
            )
            self._untied_output = head.get_output_embeddings().weight.detach().clone()
            del head

    def output_weight(self) -> Tensor:
        """The frozen ``(V, H)`` vocabulary projection."""
        if self._untied_output is not None:
            self._untied_output = self._untied_output.to(self.device)
            return self._untied_output
        return self.backbone.get_input_embeddings().weight.detach()

    def _mntp(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        hidden = self.backbone(**inputs).last_hidden_state  # (B, L, H)
        return self.loss(hidden, batch["labels"], self.output_weight())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, accuracy = self._mntp(batch)
        size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/mntp_accuracy", accuracy, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if "labels" not in batch:  # an STS loader
            super().validation_step(batch, batch_idx, dataloader_idx)
            return
        loss, accuracy = self._mntp(batch)
        size = batch["input_ids"].shape[0]
        self.log("val/mntp_loss", loss, batch_size=size, add_dataloader_idx=False)
        self.log("val/mntp_accuracy", accuracy, batch_size=size, add_dataloader_idx=False)


__all__ = ["MNTPModule"]
