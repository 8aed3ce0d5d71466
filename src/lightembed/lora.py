"""LoRA adapters on embedding backbones: apply, save, merge, and QLoRA (4-bit base) loading.

LoRA: "LoRA: Low-Rank Adaptation of Large Language Models", Edward J. Hu et al., 2021. QLoRA: "QLoRA: Efficient
Finetuning of Quantized LLMs", Tim Dettmers, Artidoro Pagnoni, Ari Holtzman and Luke Zettlemoyer, 2023.

The life of an adapter in a multi-stage recipe (LLM2Vec, "LLM2Vec: Large Language Models Are Secretly Powerful Text
Encoders", BehnamGhader et al., 2024: MNTP -> SimCSE -> supervised contrastive):

1. :func:`apply_lora` wraps a backbone in a fresh adapter (``B = 0``, so outputs are unchanged at init) or loads a
   saved one as trainable (``LoRASettings.init_from``).
2. :func:`save_adapter` writes the adapter alone (a few MB).
3. :func:`merge_lora` folds it into the base weights, ``W' = W + B @ A * alpha / r``, and returns the plain model.
   Merging is idempotent: a model with no adapter comes back unchanged, so merging twice equals merging once.

QLoRA keeps the frozen base in 4-bit NF4 (:func:`load_quantized`) and trains fp32 LoRA weights on top. Merging into
4-bit weights would re-quantise ``W + B @ A * scale`` and lose most of the update, so :func:`merge_lora` refuses a
quantized base; :func:`merge_into_base` instead reloads the full-precision base from its folder and merges the saved
adapter into that (what LLM2Vec does). The merged model therefore differs from the trained 4-bit one by the
quantisation error of the base, ``W - dequant(quant(W))``, which is the point: the next stage starts from the exact
base plus the learned update.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, BitsAndBytesConfig, PreTrainedModel

from lightembed.backbones import DTYPES, family_of, load_backbone, resolve_model_path, set_bidirectional
from lightembed.optional import require

# peft and bitsandbytes are imported where an adapter or a 4-bit base is used, not here: importing them takes seconds
# (peft imports bitsandbytes), and every command that never touches LoRA would pay for it.
if TYPE_CHECKING:
    from peft import PeftModel

log = logging.getLogger(__name__)

ADAPTER_CONFIG_FILE = "adapter_config.json"
COMPUTE_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class LoRASettings:
    """Low-rank adapter hyper-parameters (defaults are LLM2Vec's).

    Attributes:
        r: rank of the update ``B @ A`` (``A``: ``(r, in)``, ``B``: ``(out, r)``).
        alpha: scale numerator: the update is multiplied by ``alpha / r``.
        dropout: dropout on the adapter's input during training.
        target_modules: leaf names of the linear layers to adapt (``["q_proj", "v_proj"]``); ``None`` adapts every
            linear layer inside the transformer blocks (attention and MLP projections of any family: ``q_proj ...
            down_proj`` for Llama/Mistral/Qwen2, ``query key value dense`` for BERT), never embeddings or a head.
        init_from: a saved adapter folder (``<export>/adapter``, written by the export callback) to start from
            instead of a fresh adapter; its own ``r``, ``alpha``, ``dropout`` and targets are used (LLM2Vec's
            supervised step starts from SimCSE's).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"LoRA rank must be positive (option `r`), got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive (option `alpha`), got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1) (option `dropout`), got {self.dropout}")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("option `target_modules` is an empty list; use null to adapt every block projection")

    @property
    def scale(self) -> float:
        """Multiplier of the low-rank update, ``alpha / r``."""
        return self.alpha / self.r


def settings_of(model: PeftModel) -> LoRASettings:
    """The :class:`LoRASettings` of a model's active adapter, read from its peft config (targets sorted)."""
    config = model.peft_config[model.active_adapter]
    return LoRASettings(
        r=config.r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        target_modules=sorted(config.target_modules),
    )


# ----------------------------------------------------------------------------------------------- targets
def _block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``nn.ModuleList`` of transformer blocks: the list holding the most parameters (outer lists hold inner)."""
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise ValueError(
            f"{type(model).__name__} has no nn.ModuleList of transformer blocks; give LoRA `target_modules` explicitly"
        )
    return max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def _linear_names(model: nn.Module) -> dict[str, str]:
    """Qualified name -> leaf name of every linear layer (``nn.Linear`` and its bitsandbytes subclasses)."""
    return {name: name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def default_target_modules(model: nn.Module) -> list[str]:
    """Leaf names of the linear layers inside the transformer blocks, sorted (``["down_proj", ..., "v_proj"]``).

    Derived from the module tree, so no per-family table is needed: the blocks are the largest ``nn.ModuleList``;
    embeddings and heads live outside it and are never targeted.
    """
    blocks_name, _ = _block_list(model)
    inside = {leaf for name, leaf in _linear_names(model).items() if name.startswith(blocks_name + ".")}
    if not inside:
        raise ValueError(f"no linear layers inside {blocks_name!r}; give LoRA `target_modules` explicitly")
    return sorted(inside)


def _outside_blocks_with_names(model: nn.Module, leaves: list[str]) -> list[str]:
    """Linear layers outside the blocks whose leaf name matches a target (e.g. a BERT ``pooler.dense``)."""
    blocks_name, _ = _block_list(model)
    return sorted(
        name for name, leaf in _linear_names(model).items() if leaf in leaves and not name.startswith(blocks_name + ".")
    )


# --------------------------------------------------------------------------------------------- apply / save
def apply_lora(model: PreTrainedModel, settings: LoRASettings) -> PeftModel:
    """Wrap ``model`` in a trainable LoRA adapter; only the adapter's parameters require gradients afterwards.

    A fresh adapter has ``B = 0`` so the wrapped model's outputs equal the base model's at init. With
    ``settings.init_from`` the saved adapter is loaded as trainable instead (its own ``r``/``alpha``/targets; a
    mismatch with ``settings`` is logged). Works on a 4-bit base from :func:`load_quantized` (QLoRA).

    Raises:
        ValueError: ``model`` already carries an adapter (merge it first with :func:`merge_lora`).
        FileNotFoundError: ``init_from`` is not an adapter folder.
    """
    from peft import LoraConfig, get_peft_model

    if has_lora_layers(model):
        raise ValueError("model already has a LoRA adapter: merge it (merge_lora) before applying a new one")
    if settings.init_from is not None:
        return _load_trainable_adapter(model, settings)
    targets = settings.target_modules or default_target_modules(model)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        exclude_modules=_outside_blocks_with_names(model, targets) if settings.target_modules is None else None,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    use_fast_dropout(peft_model)
    trainable, total = _count_parameters(peft_model)
    log.info(
        "applied a fresh LoRA adapter (r=%d, alpha=%d, dropout=%g) to %s: %d of %d parameters trainable",
        settings.r,
        settings.alpha,
        settings.dropout,
        ", ".join(targets),
        trainable,
        total,
    )
    return peft_model


def _load_trainable_adapter(model: PreTrainedModel, settings: LoRASettings) -> PeftModel:
    folder = Path(settings.init_from).expanduser()
    if not (folder / ADAPTER_CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"LoRA `init_from` folder {str(folder)!r} holds no {ADAPTER_CONFIG_FILE} (expected a saved adapter)"
        )
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    use_fast_dropout(peft_model)
    loaded = settings_of(peft_model)
    if settings.target_modules is not None and sorted(settings.target_modules) != loaded.target_modules:
        log.warning(
            "LoRA init_from: the saved adapter targets %s, not %s", loaded.target_modules, settings.target_modules
        )
    if (loaded.r, loaded.alpha) != (settings.r, settings.alpha):
        log.warning(
            "LoRA init_from: the saved adapter has r=%d alpha=%d (settings say r=%d alpha=%d); using the saved values",
            loaded.r,
            loaded.alpha,
            settings.r,
            settings.alpha,
        )
    trainable, total = _count_parameters(peft_model)
    log.info("loaded LoRA adapter from %s as trainable: %d of %d parameters trainable", folder, trainable, total)
    return peft_model


class FastDropout(nn.Dropout):
    """Inverted dropout whose CPU keep mask costs a quarter of ``bernoulli_``'s random draws (CUDA: ``nn.Dropout``).

    ``bernoulli_`` draws one random number per element from torch's CPU generator, which is slow enough to be a large
    share of a LoRA step (the adapter's input dropout runs on every adapted projection). Here each element reads a
    16-bit slice of a random 64-bit word and is kept when the slice clears a threshold: keep probability
    ``1 - round(p * 65536) / 65536`` (exact to 1/65536), kept values scaled by ``1 / (1 - p)``; identity in eval.
    Same generator, so ``torch.manual_seed`` makes it deterministic.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # full 64-bit range
        slices = words.view(torch.int16)[: x.numel()].view(x.shape)  # 4 uniform int16 per word
        keep = slices >= round(self.p * 65536) - 32768  # P(keep) = 1 - round(p * 65536) / 65536
        return x * keep.to(x.dtype).mul_(1 / (1 - self.p))


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every LoRA input ``nn.Dropout`` (``p > 0``) of ``model`` by :class:`FastDropout`; returns how many."""
    count = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        for name, dropout in dropouts.items() if isinstance(dropouts, nn.ModuleDict) else ():
            if type(dropout) is nn.Dropout and dropout.p > 0:
                dropouts[name] = FastDropout(dropout.p).train(dropout.training)
                count += 1
    return count


def _count_parameters(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def save_adapter(model: PeftModel, folder: str | Path) -> Path:
    """Write the adapter alone (``adapter_config.json`` + ``adapter_model.safetensors``) to ``folder``; returns it."""
    if not is_peft_model(model):
        raise TypeError(f"save_adapter needs a peft.PeftModel, got {type(model).__name__}")
    folder = Path(folder)
    model.save_pretrained(str(folder))
    log.info("saved LoRA adapter to %s", folder)
    return folder


# ---------------------------------------------------------------------------------------------------- merge
# A model can only hold peft or bitsandbytes layers once that package was imported: looking in sys.modules first
# answers "no" for a plain model without paying for the import.
def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (the wrapper :func:`apply_lora` returns)."""
    return "peft" in sys.modules and isinstance(model, sys.modules["peft"].PeftModel)


def has_lora_layers(model: nn.Module) -> bool:
    """Whether ``model`` is a ``PeftModel`` or holds peft LoRA layers anywhere inside."""
    if "peft" not in sys.modules:
        return False
    from peft.tuners.lora import LoraLayer

    return is_peft_model(model) or any(isinstance(m, LoraLayer) for m in model.modules())


def is_quantized(model: nn.Module) -> bool:
    """Whether any layer of ``model`` holds bitsandbytes 4-bit weights."""
    if "bitsandbytes" not in sys.modules:
        return False
    import bitsandbytes as bnb

    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def merge_lora(model: PeftModel | PreTrainedModel) -> PreTrainedModel:
    """Fold the adapter into the base weights (``W' = W + B @ A * alpha / r``) and return the plain base model.

    Idempotent: a model without an adapter (already merged, or never adapted) is returned unchanged, so
    ``merge_lora(merge_lora(m))`` equals ``merge_lora(m)``. The peft wrapper passed in is consumed (its layers are
    replaced in place); use the return value. The merge is checked on the first adapted layer.

    Raises:
        ValueError: the base is 4-bit: merging there re-quantises the update away; use :func:`merge_into_base`.
        RuntimeError: the merged weight of the checked layer is not ``W + B @ A * scale``.
    """
    if not is_peft_model(model):
        if has_lora_layers(model):
            raise ValueError("model holds LoRA layers without a peft.PeftModel wrapper; cannot merge them safely")
        log.info("merge_lora: %s has no adapter, nothing to merge", type(model).__name__)
        return model
    if is_quantized(model):
        raise ValueError(
            "merge_lora: the base model is 4-bit (QLoRA); merging into quantized weights loses the update. "
            "Save the adapter and use merge_into_base(<full-precision base>, <adapter folder>) instead."
        )
    from peft.tuners.lora import LoraLayer

    lora_layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    check_name, check_layer = lora_layers[0]
    expected = check_layer.get_base_layer().weight.detach().float().clone()
    if not check_layer.merged:
        expected += check_layer.get_delta_weight(model.active_adapter).float()
    settings = settings_of(model)
    merged = model.merge_and_unload()
    actual = merged.get_submodule(check_name.removeprefix("base_model.model.")).weight.detach().float()
    tolerance = 1e-5 if actual.dtype == torch.float32 else 1e-2
    if not torch.allclose(actual, expected, rtol=tolerance, atol=tolerance):
        raise RuntimeError(f"merge_lora: merged weight of {check_name} is not W + B@A*scale")
    log.info(
        "merge_lora: merged the LoRA adapter (r=%d, alpha=%d) of %d layers into the base weights and unloaded it",
        settings.r,
        settings.alpha,
        len(lora_layers),
    )
    return merged


def merge_into_base(
    base_name_or_path: str,
    adapter_folder: str | Path,
    dtype: str = "float32",
    bidirectional: bool | None = None,
) -> PreTrainedModel:
    """Load the full-precision base from disk, load the saved adapter onto it and merge: the QLoRA hand-off path.

    Also the safe path for a full-precision adapter, because the training model in memory is left untouched.

    Args:
        base_name_or_path: the base the adapter was trained on (Hub id, folder, ``packaged:<name>``), loaded in
            ``dtype`` even if training used its 4-bit version.
        adapter_folder: a folder written by :func:`save_adapter`.
        dtype: weight dtype of the merged model (``float32`` keeps the update exact).
        bidirectional: attention mode of the merged decoder (``None``: the base's own); it is saved with the model.
    """
    base = load_backbone(base_name_or_path, dtype=dtype, bidirectional=bidirectional)
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(base, str(adapter_folder), is_trainable=False)
    return merge_lora(adapted)


# ---------------------------------------------------------------------------------------------------- QLoRA
def disable_cpu_weight_repacking(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference, which silently breaks training afterwards.

    On a CPU with AVX512-BF16, ``bnb.nn.Linear4bit.forward`` (seen with bitsandbytes 0.50) converts its weight in
    place to a CPU-only packed layout the first time it runs in eval mode on an input that needs no gradient (a
    validation pass). From then on every forward, training included, goes through ``gemv_4bit``, which has no
    autograd kernel: gradients stop at each frozen 4-bit layer (torch only warns) and outputs shift, so LoRA
    gradients are wrong. Setting ``support_avx512bf16_for_cpu = False`` on every ``Linear4bit`` turns the conversion
    off. Layers already packed are converted back, but packing rounded their block scales to bf16 (a lasting weight
    error, logged as a warning), so call it right after loading a 4-bit model, before any forward pass
    (:func:`load_quantized` does). On hidden sizes below the 64-wide quantisation block the packing crashes instead.
    GPU runs are unaffected either way. Returns the number of ``Linear4bit`` layers set.
    """
    if "bitsandbytes" not in sys.modules:
        return 0
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    count = unpacked = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        state = module.weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state
            )
            module.quant_state = module.weight.quant_state
            unpacked += 1
        count += 1
    if unpacked:
        log.warning(
            "unpacked %d Linear4bit layers that bitsandbytes had repacked for CPU inference; their block scales "
            "were rounded to bf16 by the packing (load the model again for the exact 4-bit weights)",
            unpacked,
        )
    if count:
        log.info("disabled bitsandbytes CPU weight repacking on %d Linear4bit layers", count)
    return count


def load_quantized(
    name_or_path: str,
    compute_dtype: Literal["bfloat16", "float32"] = "bfloat16",
    bidirectional: bool | None = None,
    device: str | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Load a backbone for QLoRA: block linear layers in 4-bit NF4 (double quantisation), the rest in float32.

    Then, deliberately: :func:`disable_cpu_weight_repacking`, and ``peft.prepare_model_for_kbit_training`` with
    ``use_gradient_checkpointing=False`` (it freezes every weight and upcasts half-precision non-quantized ones,
    a no-op here as they load in float32). Gradient checkpointing stays the stage's own ``gradient_checkpointing``
    option (non-reentrant, so peft's input-requires-grad hook is not needed). Add the adapter with
    :func:`apply_lora`.

    Args:
        name_or_path: Hub id, local folder, or ``packaged:<name>``.
        compute_dtype: dtype of the 4-bit matmuls. ``bfloat16`` is QLoRA's choice on GPU. On CPU, ``float32``
            gives LoRA gradients identical to an fp32 model holding the dequantized weights, while ``bfloat16``
            rounds them and gains little speed there, so prefer ``float32`` on CPU.
        bidirectional: for decoders, ``True`` switches to bidirectional attention; ``None`` keeps the default.
        device: where to quantize and place the weights; ``None`` picks the current CUDA device, else the CPU.
        attn_implementation: passed to transformers.
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"unknown compute_dtype {compute_dtype!r} (option `compute_dtype`); choose {list(COMPUTE_DTYPES)}"
        )
    require("bitsandbytes", purpose="4-bit quantization (QLoRA)")
    from peft import prepare_model_for_kbit_training

    path = resolve_model_path(name_or_path)
    family = family_of(AutoConfig.from_pretrained(path), name_or_path)
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[compute_dtype],
        bnb_4bit_use_double_quant=True,
    )
    model = AutoModel.from_pretrained(
        path,
        quantization_config=quantization,
        dtype=DTYPES["float32"],
        device_map={"": device},
        attn_implementation=attn_implementation,
        **family.load_kwargs,
    )
    disable_cpu_weight_repacking(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if bidirectional is not None:
        set_bidirectional(model, bidirectional)
    log.info("loaded %s in 4-bit NF4 (compute %s) on %s", name_or_path, compute_dtype, device)
    return model
