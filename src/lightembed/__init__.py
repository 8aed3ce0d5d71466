"""lightembed: Lightning stages for training text-embedding models."""

from lightembed.api import encode, load_encoder

__version__ = "0.1.0"
__all__ = ["encode", "load_encoder"]
