"""InternVL's lazy signals through its pixel shuffle, and its tile layout.

Every InternVL token is the pixel shuffle of a 2x2 block of encoder patches. :func:`shuffle_groups` runs the
model's own ``pixel_shuffle`` on a map of patch indices, so ``groups[j]`` lists the patches of token ``j`` in the
order their channels are concatenated. The [CLS] signals are recomputed from the InternViT block's own
``layernorm_before``, ``q_proj``/``k_proj`` and ``q_norm``/``k_norm`` (the encoder itself runs unchanged, with
SDPA or FlashAttention), then mapped onto tokens through the groups.

Room: adapters. May import ``errors``, :mod:`.text_signals` and :mod:`.vision_towers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import InputMismatchError, MissingSignalError
from .text_signals import PromptSignals
from .vision_towers import feature_layer_index


def shuffle_groups(pixel_shuffle: Callable[..., torch.Tensor], side: int, ratio: float) -> torch.Tensor:
    """``[T, u]`` long: the patch indices (row-major over the ``side x side`` patch grid) that each of a tile's
    ``T`` tokens is made of, in the order ``pixel_shuffle`` concatenates their channels."""
    index_map = torch.arange(side * side, dtype=torch.float64).view(1, side, side, 1)
    shuffled = pixel_shuffle(index_map, scale_factor=ratio)
    return shuffled.reshape(-1, shuffled.shape[-1]).round().long()


def tile_layout(image_size: Any, tiles: int, image_processor: Any, vision_config: Any) -> tuple[int, int]:
    """``(rows, cols)`` of the crops the processor cut from an image of ``image_size`` ``(height, width)``,
    recomputed with its own ``get_optimal_tiled_canvas`` (``tiles`` counts the crops and the thumbnail)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    size = getattr(image_processor, "size", None) or {}
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    tile = (get("height") or vision_config.image_size[0], get("width") or vision_config.image_size[1])
    low = getattr(image_processor, "min_patches", 1)
    high = getattr(image_processor, "max_patches", 12)
    cols, rows = get_optimal_tiled_canvas(tuple(int(x) for x in image_size), tile, low, high)
    if rows * cols + 1 != tiles:
        raise InputMismatchError(
            f"an image of size {tuple(int(x) for x in image_size)} tiles into {rows}x{cols} crops + a thumbnail "
            f"with min_patches={low}, max_patches={high}, but its prompt holds {tiles} tiles; pass the processor "
            "(vlmc.compress(..., processor=processor)) and the original image sizes it was given"
        )
    return rows, cols


def _cls_logits(tower: torch.nn.Module, hidden_states: tuple[torch.Tensor, ...], index: int) -> torch.Tensor:
    """``[tiles, heads, 1 + P]`` scaled logits of the [CLS] query at the InternViT block producing
    ``hidden_states[index]``, from the block's own projections of its input."""
    block = tower.encoder.layer[index - 1]
    attn = block.attention
    x = block.layernorm_before(hidden_states[index - 1])
    tiles, length, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    query = attn.q_norm(attn.q_proj(x[:, :1])).view(tiles, 1, heads, head_dim).transpose(1, 2)
    keys = attn.k_norm(attn.k_proj(x)).view(tiles, length, heads, head_dim).transpose(1, 2)
    return ((query.float() @ keys.float().transpose(-1, -2)) * attn.scale)[:, :, 0]


class InternVLSignals(PromptSignals):
    """Lazy signals of the images of one InternVL call (one encoder pass per tile; computed at most once)."""

    def __init__(self, adapter, call, hidden_states, feature_layer: int, groups, tiles_per_image: list[int]):
        super().__init__(adapter, call)
        if hidden_states is None:
            raise MissingSignalError("the InternVL vision tower returned no hidden states")
        self.tower = adapter.vision_tower
        self.hidden_states = hidden_states
        self.index = feature_layer_index(len(hidden_states), feature_layer)
        self.groups = groups.to(hidden_states[0].device)
        self.first_tile = [sum(tiles_per_image[:i]) for i in range(len(tiles_per_image))]
        self.tiles_per_image = tiles_per_image
        self._attention: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None

    def providers(self, image: int, row: int, columns: torch.Tensor, is_image: torch.Tensor) -> dict[str, Any]:
        return {
            "patch_features": lambda: self.patch_features(image),
            "vision_features": lambda: self.patch_features(image).flatten(1),
            "cls_attention": lambda: self._of_image(image, self.cls_attention()),
            "cls_attention_logits": lambda: self._of_image(image, self.cls_attention_logits()),
            **self.text_providers(row, columns, is_image),
        }

    def tile_providers(self, image: int, tile: int) -> dict[str, Any]:
        """The [CLS] signals of one tile's own encoder pass (a crop or the thumbnail)."""
        index = self.first_tile[image] + tile
        return {
            "cls_attention": lambda: self.cls_attention()[index],
            "cls_attention_logits": lambda: self.cls_attention_logits()[index],
        }

    def _tiles(self, image: int) -> slice:
        return slice(self.first_tile[image], self.first_tile[image] + self.tiles_per_image[image])

    def _of_image(self, image: int, per_tile: torch.Tensor) -> torch.Tensor:
        return per_tile[self._tiles(image)].flatten()

    def patch_features(self, image: int) -> torch.Tensor:
        """``[N, u, Dv]`` the feature-layer patches of every token of ``image`` ([CLS] dropped)."""
        patches = self.hidden_states[self.index][self._tiles(image), 1:]
        return patches[:, self.groups].flatten(0, 1)

    @torch.no_grad()
    def cls_attention(self) -> torch.Tensor:
        """``[tiles, T]``: head-mean [CLS] attention at the feature-layer block, summed over each token's patches."""
        if self._attention is None:
            probs = _cls_logits(self.tower, self.hidden_states, self.index).softmax(dim=-1).mean(dim=1)
            self._attention = probs[:, 1:][:, self.groups].sum(dim=-1)
        return self._attention

    @torch.no_grad()
    def cls_attention_logits(self) -> torch.Tensor:
        """``[tiles, T]``: head-mean [CLS] logits at the tower's last block, averaged over each token's patches."""
        if self._logits is None:
            last = len(self.tower.encoder.layer)
            if len(self.hidden_states) != last + 1:
                raise MissingSignalError(
                    f"the encoder pass gave {len(self.hidden_states)} hidden states, not {last + 1}: the input of its "
                    "last block is missing, so its [CLS] attention logits cannot be recomputed"
                )
            logits = _cls_logits(self.tower, self.hidden_states, last).mean(dim=1)
            self._logits = logits[:, 1:][:, self.groups].mean(dim=-1)
        return self._logits
