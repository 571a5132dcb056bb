"""Uniform spatial subsampling of the token grid."""

from __future__ import annotations

from dataclasses import dataclass

from ..functional import uniform_grid_indices
from ..selection import Selection
from ..views import VisualContext
from .base import Method


@dataclass
class Uniform(Method):
    """Keep ``budget`` tokens spread evenly over the image: the centre token of each of ``budget`` near-square
    cells tiling the grid (64 of 24x24 gives a regular 8x8 lattice). Without a grid, evenly spaced indices."""

    name = "uniform"
    description = "spatially even subsample of the token grid (a regular lattice)"
    #: a baseline without official code: the library default
    default_position_ids = "original"

    def select(self, ctx: VisualContext) -> Selection:
        kept = uniform_grid_indices(ctx.num_tokens, self.num_to_keep(ctx), ctx.grid)
        return Selection(kept_indices=kept.to(ctx.features.device))
