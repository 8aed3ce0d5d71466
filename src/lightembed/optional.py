"""Optional packages: import them where they are used, and name the extra that installs a missing one.

A package only some commands need (``mteb``, ``bitsandbytes`` for QLoRA, ``sentence_transformers`` for the
benchmarks) is imported inside the function that uses it, so ``lightembed --help`` and every other command start
without it. When it is missing, :func:`require` raises :class:`MissingExtra`, which the command line prints as one
line (``pip install 'lightembed[mteb]'``) instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the pip extra (or package) that installs it."""


def install_hint(extra: str | None, package: str) -> str:
    """The pip command that installs ``package``: through lightembed's ``extra`` when there is one."""
    return f"pip install 'lightembed[{extra}]'" if extra else f"pip install {package}"


def require(module: str, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` naming what installs it.

    Args:
        module: the dotted module to import (``"mteb"``, ``"bitsandbytes"``).
        extra: the lightembed extra that installs it (``"mteb"`` -> ``pip install 'lightembed[mteb]'``); ``None``
            names the top-level package itself.
        purpose: what needs it, for the message (``"MTEB evaluation"``).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        top = module.partition(".")[0]
        if error.name is not None and error.name.partition(".")[0] != top:
            raise  # the package is there but one of *its* imports failed: a broken install, not a missing extra
        needed_for = f" (needed for {purpose})" if purpose else ""
        raise MissingExtra(
            f"the optional package {top!r} is not installed{needed_for}: {install_hint(extra, top)}"
        ) from error
