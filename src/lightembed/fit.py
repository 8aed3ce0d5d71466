"""``lightembed fit|validate|test``: LightningCLI over any stage and data module, with lightembed's argument links.

The tokenizer and max length of the data module are linked to the stage's backbone options, never repeated in YAML;
after ``fit`` the best checkpoint is tested on the data module's test sets when it has any. The pipeline runs its
stages through :func:`build_cli`, the same code path as the command line.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning as L
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightembed.strategies  # noqa: F401  (registers the `fsdp2` and `fsdp_blocks` strategy names)
from lightembed.interrupts import handle_interrupts
from lightembed.precision import resolve_precision
from lightembed.stages.base import EmbeddingModule

# lightembed's command line passes its (normalised) sys.argv as `args`; the warning guards against giving both by
# mistake, which lightembed never does, so it only alarms users
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
# every Trainer start logs an advertisement for a cloud logger; keep Lightning's other messages
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: "💡" not in str(record.msg))

BACKBONE_OPTION = "model.init_args.encoder.backbone"
"""The stage option naming the backbone (Hub id, folder, ``packaged:`` name); the pipeline pins it per stage."""
MAX_LENGTH_OPTION = "model.init_args.encoder.max_length"
"""The stage option holding the token limit, linked to the data module's ``max_length``."""
ADAPTER_INIT_OPTION = "model.init_args.encoder.lora.init_from"
"""The stage option that continues a saved LoRA adapter instead of starting a fresh one."""


def option_value(config: Mapping[str, Any], option: str) -> Any:
    """The value of a dotted LightningCLI option in a parsed config dict (``None`` when a level is missing)."""
    value: Any = config
    for key in option.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


class Trainer(L.Trainer):
    """Lightning's Trainer whose ``precision`` also takes ``auto``: the faster training precision of this machine.

    ``auto`` is bf16-mixed on CPUs that multiply bf16 natively and on GPUs with bf16, else 32-true
    (:func:`lightembed.precision.resolve_precision`); every other value is Lightning's. The other arguments are
    Lightning's, passed through unchanged (LightningCLI reads them from ``L.Trainer``'s signature).
    """

    def __init__(self, precision: _PRECISION_INPUT | Literal["auto"] | None = None, **kwargs: Any) -> None:
        super().__init__(precision=resolve_precision(precision, kwargs.get("accelerator", "auto")), **kwargs)


class LightembedCLI(LightningCLI):
    """LightningCLI with lightembed's argument links, the :class:`Trainer` that takes ``precision: auto``, and a
    test pass on the best checkpoint after ``fit``."""

    def __init__(self, *args: Any, trainer_class: type[L.Trainer] = Trainer, **kwargs: Any) -> None:
        super().__init__(*args, trainer_class=trainer_class, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(BACKBONE_OPTION, "data.init_args.tokenizer")
        parser.link_arguments(MAX_LENGTH_OPTION, "data.init_args.max_length")

    def before_instantiate_classes(self) -> None:
        # resolve `auto` in the config itself, so the run's saved config.yaml records the precision it trained in
        config = self.config[self.subcommand] if self.subcommand else self.config
        config.trainer.precision = resolve_precision(config.trainer.precision, config.trainer.accelerator)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        try:
            return super().instantiate_trainer(**kwargs)
        except ValueError as error:  # Lightning's `fsdp` (FSDP1) refuses CPUs: point at the strategy that runs there
            if "fsdp" not in str(error) or "GPU" not in str(error):
                raise
            raise ValueError(
                f"{error} On CPUs use FSDP2 instead: `--trainer.strategy fsdp2` (or configs/trainer/fsdp2.yaml), "
                "or DDP: `--trainer.strategy ddp`."
            ) from error

    def after_fit(self) -> None:
        if getattr(self.datamodule, "test_sources", None) and not self.trainer.fast_dev_run:
            ckpt = "best" if getattr(self.trainer.checkpoint_callback, "best_model_path", "") else None
            fit_metrics = dict(self.trainer.callback_metrics)
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
            # keep the fit's train/val metrics beside the test ones (the test pass resets callback_metrics)
            for name, value in fit_metrics.items():
                self.trainer.callback_metrics.setdefault(name, value)


def build_cli(args: Sequence[str] | None = None, run: bool = True, exit_on_error: bool = True) -> LightembedCLI:
    """Build (and by default run) the LightningCLI; ``run=False`` only parses and instantiates (used by tests).

    ``exit_on_error=False`` raises the parser's errors (``ArgumentError``) instead of printing usage and exiting 2.
    The optimizer and schedule are stage options (``--model.init_args.optimizer``, ``...scheduler``): LightningCLI's
    top-level ``--optimizer``/``--lr_scheduler`` are not offered, as it would build them before the stage's
    ``configure_model`` creates the weights.

    SIGTERM/SIGINT stop a run at a batch boundary and exit with 143/130 (:mod:`lightembed.interrupts`).
    """
    with handle_interrupts("fit"):
        return LightembedCLI(
            EmbeddingModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": exit_on_error},
            auto_configure_optimizers=False,
            args=list(args) if args is not None else None,
            run=run,
        )
