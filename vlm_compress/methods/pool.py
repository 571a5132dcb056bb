"""2-D average pooling of the token grid to exactly the budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..functional import cell_average_pool, merge_by_groups, uniform_grid_indices
from ..selection import Selection
from ..views import VisualContext
from .base import Method


@dataclass
class Pool(Method):
    """Average-pool the projected visual tokens over ``budget`` near-square cells that tile the grid
    (64 of 24x24 is an exact 3x3 pooling to 8x8). Each pooled token takes the position of its cell's central
    token. Without a grid, pools runs of consecutive tokens."""

    name = "pool"
    description = "2-D average pooling of the token grid to the budget (merges tokens)"
    #: a baseline without official code: the library default
    default_position_ids = "original"

    def select(self, ctx: VisualContext) -> Selection:
        k = self.num_to_keep(ctx)
        n = ctx.num_tokens
        if k == n:
            return self.keep_all(ctx)
        if ctx.grid is not None:
            pooled, groups, centres = cell_average_pool(ctx.features, ctx.grid, k)
        else:
            centres = uniform_grid_indices(n, k).to(ctx.features.device)
            starts = (torch.arange(k, device=ctx.features.device) * n) // k
            groups = torch.searchsorted(starts, torch.arange(n, device=ctx.features.device), right=True) - 1
            pooled = merge_by_groups(ctx.features, groups, k)
        return Selection(kept_indices=centres, features=pooled, groups=groups)
