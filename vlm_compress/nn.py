"""TAP's trainable modules, documented under this name; they live in :mod:`vlm_compress.tap.modules`."""

from .tap.modules import (
    INITS,
    DilationPredictor,
    TokenAwareAvgPool,
    attention_diversification_loss,
    square_grid,
)

__all__ = ["INITS", "DilationPredictor", "TokenAwareAvgPool", "attention_diversification_loss", "square_grid"]
