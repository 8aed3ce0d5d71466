"""lightembed: Lightning stages for training text-embedding models.

The public names are imported on first use (PEP 562 ``__getattr__``), so ``lightembed --help`` and
``import lightembed.cli`` start without loading torch and transformers.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightembed.api import encode, load_encoder
    from lightembed.encoder import Encoder, EncoderSettings

__version__ = "0.1.0"
__all__ = ["Encoder", "EncoderSettings", "encode", "load_encoder"]

_LAZY = {
    "Encoder": "lightembed.encoder",
    "EncoderSettings": "lightembed.encoder",
    "encode": "lightembed.api",
    "load_encoder": "lightembed.api",
}

# bitsandbytes (which peft imports) warns on every start on CPUs with AVX512-BF16 that its Hub-downloaded `kernels`
# package is missing; it then uses its own CPU kernel, so the line asks the user for nothing they need to do.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lightembed' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
