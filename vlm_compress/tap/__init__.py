"""TAP's ViT surgery: the module and its loss (:mod:`.modules`), insertion into timm / open_clip / HF CLIP towers
and fine-tuning (:mod:`.vit`), and the signal it offers compressors (:mod:`.signal`, registered on import).

Room: TAP. May import ``functional``, ``errors`` and ``engine.signals``; adapters never import it.
"""

from ..engine.signals import register_signal_source
from .modules import DilationPredictor, TokenAwareAvgPool, attention_diversification_loss, square_grid
from .signal import NAME, tap_scale_weights
from .vit import TapHandle, VitLayout, finetune_tap, insert_tap, recorded_scale_weights, vit_layout

register_signal_source(NAME, tap_scale_weights)

__all__ = [
    "DilationPredictor",
    "TapHandle",
    "TokenAwareAvgPool",
    "VitLayout",
    "attention_diversification_loss",
    "finetune_tap",
    "insert_tap",
    "recorded_scale_weights",
    "square_grid",
    "vit_layout",
]
