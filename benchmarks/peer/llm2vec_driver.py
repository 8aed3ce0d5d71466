"""Train one LLM2Vec stage with the llm2vec package (0.2.3) on recorded batches and report its speed and losses.

Runs inside the peer virtual environment that benchmarks/llm2vec_peer.py creates (transformers 4.44, peft 0.12),
never in lightembed's. The model classes, the pooling and the loss are llm2vec's; the training loop is the Hugging
Face Trainer, as in llm2vec's experiment scripts (run_mntp.py, run_simcse.py, run_supervised.py):

- ``mntp``: ``LlamaBiForMNTP`` with a LoRA adapter on its inner ``LlamaBiModel``, the causal-LM loss of the shifted
  logits (the token at i is read from the logits at i - 1, every position projected on the vocabulary),
  ``DataCollatorForLanguageModeling`` (80/10/10 masking) with ``_`` as the mask token.
- ``simcse`` / ``supervised``: ``LLM2Vec`` (bidirectional ``LlamaBiModel``, mean pooling, left padding, its own
  ``tokenize``) with a fresh LoRA adapter; one forward per text field, ``HardNegativeNLLLoss``.

The batches are the ones lightembed trained on in the same run (token rows for MNTP, texts otherwise), in the same
order: the Trainer's shuffle is replaced by a sequential sampler.

    python llm2vec_driver.py SPEC.json OUTPUT.json

SPEC holds ``stage``, ``model`` (a Hugging Face folder), ``batches`` (a JSON file), ``batch_size``, ``max_length``,
``lr``, ``warmup_ratio``, ``lora`` (``r``, ``alpha``, ``dropout``), ``mask_probability``, ``attention_dropout``,
``temperature``, ``bf16``, ``threads``, ``warmup_steps`` (excluded from timing), ``seed``, ``max_grad_norm``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from llm2vec import LLM2Vec  # noqa: E402
from llm2vec.loss.HardNegativeNLLLoss import HardNegativeNLLLoss  # noqa: E402
from llm2vec.models import LlamaBiForMNTP  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from torch.utils.data import SequentialSampler  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

# the projections llm2vec's scripts adapt on Llama models
LORA_MODULES = ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# what LLM2Vec.tokenize splits on: the text after it is what mean pooling averages (no instruction here)
SEPARATOR = "!@#$%^&*()"


def lora(spec: dict[str, Any]) -> LoraConfig:
    settings = spec["lora"]
    return LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=LORA_MODULES,
        bias="none",
        task_type=None,
    )


class StepClock(TrainerCallback):
    """The wall-clock time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())


class RecordedOrder(Trainer):
    """The Trainer with the recorded batch order (no shuffle) and each step's loss kept."""

    def __init__(self, *args: Any, loss_function: HardNegativeNLLLoss | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_function = loss_function
        self.losses: list[float] = []
        self.autocast_dtypes: set[str] = set()

    def _get_train_sampler(self) -> SequentialSampler:
        return SequentialSampler(self.train_dataset)

    def _remove_unused_columns(self, dataset: Any, description: str | None = None) -> Any:
        return dataset

    def compute_loss(self, model: torch.nn.Module, inputs: Any, return_outputs: bool = False) -> Any:
        if torch.is_autocast_enabled("cpu"):  # what the Trainer's bf16=True really does on this CPU
            self.autocast_dtypes.add(str(torch.get_autocast_dtype("cpu")))
        if self.loss_function is None:  # MNTP: the model's own shifted causal-LM loss
            loss = super().compute_loss(model, inputs, return_outputs=False)
        else:  # as llm2vec's SimCSE/supervised trainers: one forward per field, then the contrastive loss
            features, _labels = inputs
            reps = [model(feature) for feature in features]  # each (B, H)
            loss = self.loss_function(reps[0], reps[1], reps[2] if len(reps) > 2 else None)
        self.losses.append(float(loss.detach()))
        return loss


class FieldCollator:
    """Tokenise each text field with ``LLM2Vec.tokenize`` (as llm2vec's collators do)."""

    def __init__(self, model: LLM2Vec) -> None:
        self.model = model

    def __call__(self, rows: list[list[str]]) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        fields = list(zip(*rows, strict=True))
        return [self.model.tokenize([SEPARATOR + text for text in field]) for field in fields], torch.ones(len(rows))


def mntp_setup(spec: dict[str, Any], batches: list[dict[str, Any]]) -> tuple[Any, Any, list[Any], None]:
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if tokenizer.mask_token is None:  # llm2vec's "blank" mask token type
        tokenizer.mask_token = "_"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = LlamaBiForMNTP.from_pretrained(spec["model"], torch_dtype=torch.float32, attn_implementation="sdpa")
    model.set_model_for_peft(get_peft_model(model.get_model_for_peft(), lora(spec)))
    rows = [{"input_ids": row} for batch in batches for row in batch["rows"]]
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=spec["mask_probability"])
    return model, collator, rows, None


def contrastive_setup(spec: dict[str, Any], batches: list[dict[str, Any]]) -> tuple[Any, Any, list[Any], Any]:
    extra = {"attention_dropout": spec["attention_dropout"]} if spec.get("attention_dropout") else {}
    model = LLM2Vec.from_pretrained(
        spec["model"],
        enable_bidirectional=True,
        pooling_mode="mean",
        max_length=spec["max_length"],
        torch_dtype=torch.float32,
        attn_implementation="sdpa",
        **extra,
    )
    model.model = get_peft_model(model.model, lora(spec))
    rows = [list(row) for batch in batches for row in zip(*batch["fields"], strict=True)]
    return model, FieldCollator(model), rows, HardNegativeNLLLoss(scale=1.0 / spec["temperature"])


def main() -> None:
    spec_path, output_path = sys.argv[1:3]
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    with open(spec["batches"]) as f:
        batches = json.load(f)
    setup = mntp_setup if spec["stage"] == "mntp" else contrastive_setup
    model, collator, rows, loss_function = setup(spec, batches)
    steps = len(batches)
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=steps,
            per_device_train_batch_size=spec["batch_size"],
            learning_rate=spec["lr"],
            weight_decay=0.0,
            warmup_ratio=spec["warmup_ratio"],
            lr_scheduler_type="linear",
            max_grad_norm=spec["max_grad_norm"],
            bf16=spec["bf16"],
            use_cpu=True,
            seed=spec["seed"],
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            remove_unused_columns=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        clock = StepClock()
        trainer = RecordedOrder(
            model=model,
            args=args,
            train_dataset=rows,
            data_collator=collator,
            loss_function=loss_function,
            callbacks=[clock],
        )
        trainer.train()
    warm = spec["warmup_steps"]
    result = {
        "seconds": clock.ends[-1] - clock.ends[warm - 1],
        "timed_steps": len(clock.ends) - warm,
        "losses": trainer.losses,
        "threads": torch.get_num_threads(),
        "precision": f"autocast {sorted(trainer.autocast_dtypes)}" if trainer.autocast_dtypes else "fp32",
        "versions": {
            pkg: importlib.metadata.version(pkg)
            for pkg in ("llm2vec", "transformers", "peft", "accelerate", "torch", "tokenizers")
        },
    }
    with open(output_path, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
