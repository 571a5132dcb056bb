"""AnyRes token layout and signals (LLaVA-NeXT's thumbnail + crops): where each content token and newline sits
in an image's placeholder block, and the [CLS] signals of each encoder pass mapped onto the content tokens.

Room: adapters. May import the engine's data types, transformers' LLaVA-NeXT helpers and :mod:`.vision_towers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from ..engine.sequence import ImageSlot
from .vision_towers import ImageSignals


@dataclass
class AnyResLayout:
    """Where one image's tokens sit in its placeholder block (all tensors index that block of ``M`` tokens).

    Attributes:
        content: ``[N]`` block position of every content token (thumbnail, then the un-padded grid).
        grid_row: ``[N]`` grid row of every content token (``-1`` for the thumbnail).
        newlines: ``[H]`` block position of each grid row's newline token.
        source: ``[N - T]`` for every grid token, its index in the crops' flat tokens (``crop * s*s + r*s + c``).
        thumbnail_tokens: ``T = s * s``.
        crop_layout: ``(rows, cols)`` of the crops.
        side: ``s``, tokens per crop side.
    """

    content: torch.Tensor
    grid_row: torch.Tensor
    newlines: torch.Tensor
    source: torch.Tensor
    thumbnail_tokens: int
    crop_layout: tuple[int, int]
    side: int

    @property
    def num_tokens(self) -> int:
        return int(self.content.numel()) + int(self.newlines.numel())


def anyres_layout(image_size: Any, grid_pinpoints: list, encoder_size: int, side: int) -> AnyResLayout:
    """The token layout ``LlavaNextModel.pack_image_features`` produces for an image of ``image_size`` (h, w).

    The un-padding is delegated to transformers' own ``unpad_image`` on a map of token indices, so the layout
    follows the model exactly.
    """
    rows, cols = get_anyres_image_grid_shape(image_size, grid_pinpoints, encoder_size)
    # crops' flat token index, arranged as the model arranges features: [rows*s, cols*s]
    flat = torch.arange(rows * cols * side * side).view(rows, cols, side, side)
    grid = flat.permute(0, 2, 1, 3).reshape(1, rows * side, cols * side)
    grid = unpad_image(grid, image_size)[0]
    height, width = grid.shape
    thumbnail = side * side
    row_starts = thumbnail + torch.arange(height) * (width + 1)
    grid_positions = (row_starts[:, None] + torch.arange(width)[None]).flatten()
    content = torch.cat([torch.arange(thumbnail), grid_positions])
    grid_row = torch.cat([torch.full((thumbnail,), -1), torch.arange(height).repeat_interleave(width)])
    return AnyResLayout(
        content=content,
        grid_row=grid_row,
        newlines=row_starts + width,
        source=grid.flatten(),
        thumbnail_tokens=thumbnail,
        crop_layout=(rows, cols),
        side=side,
    )


def newline_providers(block: torch.Tensor, layout: AnyResLayout) -> dict[str, Any]:
    """The ``newlines`` (``[H, D]`` the block's newline tokens) and ``newline_slots`` (``[H]`` how many content
    tokens precede each in the block) signals of one image."""
    return {
        "newlines": lambda: block[layout.newlines.to(block.device)],
        "newline_slots": lambda: torch.searchsorted(layout.content, layout.newlines),
    }


@dataclass
class AnyResSlot(ImageSlot):
    """An :class:`ImageSlot` that also knows the image's AnyRes layout and its packed features (newlines included)."""

    layout: AnyResLayout | None = None
    packed: torch.Tensor | None = None  # [M, D] the model's own features for the block


class AnyResSignals(ImageSignals):
    """:class:`ImageSignals` for AnyRes images: encoder passes are per thumbnail/crop, mapped to content tokens."""

    def __init__(self, adapter, call, hidden_states, feature_layer, strategy, layouts, first_patch):
        super().__init__(adapter, call, hidden_states, feature_layer, strategy)
        self.layouts = layouts
        self.first_patch = first_patch

    def per_image(self, image: int, per_patch: torch.Tensor) -> torch.Tensor:
        """``[P, T, ...]`` per-pass values -> ``[N, ...]`` over the image's content tokens."""
        layout = self.layouts[image]
        first = self.first_patch[image]
        rows, cols = layout.crop_layout
        thumbnail = per_patch[first]
        crops = per_patch[first + 1 : first + 1 + rows * cols].flatten(0, 1)
        return torch.cat([thumbnail, crops[layout.source.to(crops.device)]])

    def image_passes(self, image: int) -> torch.Tensor:
        """``[1 + rows * cols]`` the image's encoder passes: its thumbnail, then its crops in row-major order."""
        rows, cols = self.layouts[image].crop_layout
        return self.first_patch[image] + torch.arange(1 + rows * cols)

    def vision_features(self, image: int) -> torch.Tensor:
        layers = [self.hidden_states[layer][:, self._start() :] for layer in self.feature_layers]
        return self.per_image(image, torch.cat(layers, dim=-1))

    def region_providers(
        self, image: int, crop: int | None = None, local: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """The [CLS] signals of one region's own encoder pass: ``image``'s thumbnail (``crop=None``) or crop
        ``crop``, restricted to its ``local`` (valid, raster-order) tokens."""
        index = self.first_patch[image] + (0 if crop is None else 1 + crop)

        def pick(per_pass: torch.Tensor) -> torch.Tensor:
            return per_pass[index] if local is None else per_pass[index][local]

        return {
            "cls_attention": lambda: pick(self.cls_attention()),
            "cls_attention_logits": lambda: pick(self.cls_attention_logits()),
        }
