"""DearKD student models (registered with timm on import) and the feature aligner."""

from .aligner import Aligner, patch_tokens
from .dearkd import DearKD, build_dearkd
from .mhca import MHCAttention, attention_distance, attention_probs, relative_encodings

__all__ = [
    "Aligner",
    "DearKD",
    "MHCAttention",
    "attention_distance",
    "attention_probs",
    "build_dearkd",
    "patch_tokens",
    "relative_encodings",
]
