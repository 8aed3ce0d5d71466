"""lightembed: Lightning stages for training text-embedding models."""

from lightembed.api import encode, load_encoder
from lightembed.encoder import Encoder, EncoderSettings

__version__ = "0.1.0"
__all__ = ["Encoder", "EncoderSettings", "encode", "load_encoder"]
