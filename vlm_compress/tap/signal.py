"""TAP's signal: the scale weights the TAP modules in a vision tower recorded in a call's encoder pass.

Registered with the engine as ``tap_scale_weights`` when :mod:`vlm_compress.tap` is imported, so an adapter that
describes its encoder pass offers it without knowing about TAP (the ``tap`` compressor reads it).

Room: TAP. May import ``engine.signals`` and :mod:`.vit`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..engine.signals import EncoderPass
from .vit import recorded_scale_weights

NAME = "tap_scale_weights"


def tap_scale_weights(encoder: EncoderPass) -> Callable[[int], torch.Tensor] | None:
    """``image -> [N, K]`` scale weights of the call's pass, or ``None`` when the tower has no TAP that ran on it."""
    weights = recorded_scale_weights(encoder.vision_tower)
    passes, patches = encoder.num_passes, encoder.num_patches
    if weights is None or weights.shape[0] != passes or weights.shape[1] not in (patches, patches + 1):
        return None
    weights = weights[:, weights.shape[1] - patches :]
    return lambda image: encoder.per_image(image, weights)
