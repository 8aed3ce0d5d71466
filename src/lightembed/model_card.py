"""The model card (``README.md``) of an export, in the layout sentence-transformers writes for its models.

YAML metadata the Hugging Face Hub reads (library, pipeline tag, base model, datasets), then the sections of
sentence-transformers' card: model description, full architecture, usage (with sentence-transformers and with
lightembed), evaluation, training details. What training knows (loss, data, scores) comes in :class:`ModelCardData`;
what the model is (base, pooling, dimension, prompts) from the encoder that writes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

HUB_TAGS = ("sentence-transformers", "sentence-similarity", "feature-extraction", "lightembed")


@dataclass
class ModelCardData:
    """What training knows about an export.

    Attributes:
        loss: the loss class name, e.g. ``AnglEObjectiveLoss`` (empty: unknown).
        loss_settings: the loss's constructor settings (shown as JSON under the loss).
        datasets: the training sources (Hub ids or local paths).
        scores: evaluation name -> value, e.g. ``{"val/spearman_mean": 0.84}``.
        stage: the training stage class, e.g. ``ContrastiveModule``.
        training_settings: optimiser, schedule and batch settings worth reporting.
    """

    loss: str = ""
    loss_settings: dict[str, Any] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    stage: str = ""
    training_settings: dict[str, Any] = field(default_factory=dict)


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:", *(f"- {json.dumps(v)}" for v in values)] if values else []


def _architecture(model: dict[str, Any]) -> str:
    pooling = f"Pooling({{'embedding_dimension': {model['dimension']}, 'pooling_mode': '{model['pooling']}'}})"
    lines = [
        "SentenceTransformer(",
        f"  (0): Transformer({{'max_seq_length': {model['max_length']}, 'do_lower_case': False}})",
        f"  (1): {pooling}",
    ]
    if model["normalize"]:
        lines.append("  (2): Normalize()")
    return "\n".join([*lines, ")"])


def render_model_card(card: ModelCardData, model: dict[str, Any]) -> str:
    """The ``README.md`` text: ``model`` holds ``base_model``, ``dimension``, ``max_length``, ``pooling``,
    ``normalize`` and ``prompts`` of the exported encoder."""
    base = model["base_model"]
    front = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        *_yaml_list("tags", list(HUB_TAGS)),
        f"base_model: {json.dumps(base)}",
        *_yaml_list("datasets", card.datasets),
        "---",
    ]
    prompts = model.get("prompts") or {}
    first_prompt = next(iter(prompts), None)
    prompt_arg = f", prompt_name={json.dumps(first_prompt)}" if first_prompt else ""
    description = [
        "- **Model Type:** Sentence Transformer",
        f"- **Base model:** {base}",
        f"- **Maximum Sequence Length:** {model['max_length']} tokens",
        f"- **Output Dimensionality:** {model['dimension']} dimensions",
        "- **Similarity Function:** Cosine Similarity",
        f"- **Pooling:** {model['pooling']}{', L2-normalised' if model['normalize'] else ''}",
    ]
    if card.datasets:
        description += ["- **Training Datasets:**", *(f"    - {d}" for d in card.datasets)]
    if card.stage:
        description.append(f"- **Trained with:** lightembed `{card.stage}`")
    parts = [
        "\n".join(front),
        "",
        f"# SentenceTransformer based on {base}",
        "",
        f"This is a [sentence-transformers](https://www.SBERT.net) model finetuned from {base} with lightembed. It "
        f"maps sentences & paragraphs to a {model['dimension']}-dimensional dense vector space.",
        "",
        "## Model Details",
        "",
        "### Model Description",
        "\n".join(description),
        "",
        "### Full Model Architecture",
        "",
        "```",
        _architecture(model),
        "```",
        "",
        "## Usage",
        "",
        "### Direct Usage (Sentence Transformers)",
        "",
        "```bash\npip install -U sentence-transformers\n```",
        "",
        "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
        'model = SentenceTransformer("path/to/this/folder")\n'
        f'embeddings = model.encode(["The weather is lovely today.", "It is sunny outside!"]{prompt_arg})\n'
        "print(embeddings.shape)\n```",
        "",
        "### Direct Usage (lightembed)",
        "",
        "```python\nfrom lightembed.encoder import Encoder\n\n"
        'encoder = Encoder.from_pretrained("path/to/this/folder")\n'
        f'embeddings = encoder.encode(["The weather is lovely today.", "It is sunny outside!"]{prompt_arg})\n'
        "```",
    ]
    if prompts:
        rows = "\n".join(f"| `{name}` | `{json.dumps(text)}` |" for name, text in prompts.items())
        default = model.get("default_prompt_name")
        note = f"\n\nThe default prompt, applied when no other is given, is `{default}`." if default else ""
        parts += ["", "### Prompts", "", f"| name | prompt |\n|:--|:--|\n{rows}{note}"]
    if card.scores:
        rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in card.scores.items())
        parts += ["", "## Evaluation", "", "### Metrics", "", f"| Metric | Value |\n|:--|:--|\n{rows}"]
    training = ["", "## Training Details", ""]
    if card.datasets:
        training += ["### Training Dataset", "", "\n".join(f"- {d}" for d in card.datasets), ""]
    if card.loss:
        settings = json.dumps(card.loss_settings, indent=4, default=str)
        training += [f"* Loss: `{card.loss}` with these parameters:", f"```json\n{settings}\n```", ""]
    if card.training_settings:
        settings = "\n".join(f"- `{k}`: {v}" for k, v in card.training_settings.items())
        training += ["### Training Hyperparameters", "", settings, ""]
    if len(training) > 3:
        parts += training
    return "\n".join(parts).rstrip() + "\n"
