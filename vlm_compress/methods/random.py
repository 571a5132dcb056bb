"""Random selection: the floor every method must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..selection import Selection
from ..views import VisualContext
from .base import Method


@dataclass
class RandomSelection(Method):
    """Keep ``budget`` tokens drawn uniformly at random, reproducibly.

    Attributes:
        seed: the draw for image ``i`` of a call uses ``seed + i``, so a call is reproducible and images differ.
    """

    seed: int = 0

    name = "random"
    description = "uniformly random tokens (seeded); the floor every method must beat"
    #: a baseline without official code: the library default
    default_position_ids = "original"

    def select(self, ctx: VisualContext) -> Selection:
        generator = torch.Generator().manual_seed(self.seed + ctx.image_index)
        kept = torch.randperm(ctx.num_tokens, generator=generator)[: self.num_to_keep(ctx)]
        return Selection(kept_indices=kept.to(ctx.features.device))
