"""PyramidDrop's schedule: at which decoder layers the visual tokens are ranked and dropped, and how many survive
each stage (Xing et al., arXiv 2410.17247; official code: Cooperx521/PyramidDrop).

The language model's forward pass is split into stages at the layers of ``layer_list``; at the end of stage ``s``
(``s = 1 .. S-1``) each image keeps the fraction ``lambda^s`` of its ``N`` visual tokens, ranked by the attention
that the last instruction token gives them. Here the first stage keeps ``budget`` (a count, or a fraction of
``N``) and every later stage ``lambda`` times the one before, as the official ``image_token_ratio_list``
``[r, r*lambda, r*lambda^2]`` does (``int(N * ratio)``, floored).

May import torch and the rest of ``functional/`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["pyramid_keep_count", "pyramid_layers"]


def pyramid_layers(num_layers: int, layer_list: Sequence[int | float]) -> list[int]:
    """The decoder layers (``1 .. num_layers-1``, ascending, without repeats) before which a stage ends.

    An int is a layer index; a float in (0, 1) is a fraction of the depth, rounded (``0.25, 0.5, 0.75`` ->
    ``8, 16, 24`` on a 32-layer model, the paper's LLaVA-1.5 setting). Layers outside ``1 .. num_layers-1``
    after rounding are skipped; a repeated layer counts once (its first stage).
    """
    layers: list[int] = []
    for entry in layer_list:
        layer = entry if isinstance(entry, int) else round(entry * num_layers)
        if 1 <= layer < num_layers and layer not in layers:
            layers.append(layer)
    return layers


def pyramid_keep_count(num_tokens: int, budget: int | float, lambda_: float, stage: int) -> int:
    """Visual tokens of an ``num_tokens``-token image kept after stage ``stage`` (1-based).

    ``budget``: tokens kept by stage 1 (int) or that fraction of ``num_tokens`` (float); stage ``s`` keeps
    ``floor(budget_tokens * lambda^(s-1))``, at most ``num_tokens``.
    """
    first = num_tokens * budget if isinstance(budget, float) else budget
    return min(num_tokens, math.floor(first * lambda_ ** (stage - 1) + 1e-9))
