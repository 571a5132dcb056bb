"""InternVL 2.5 / 3 / 3.5 (``InternVLForConditionalGeneration``, model_type ``internvl``).

The processor cuts every image into dynamic *tiles* (``rows x cols`` crops of the encoder's resolution, 1 to
``max_patches``) plus, when there is more than one crop, a *thumbnail* of the whole image, appended **last**. Each
tile is one encoder pass; its ``P`` patch features (the [CLS] token dropped) go through a **pixel shuffle** that
folds every 2x2 block of patches into one token (``downsample_ratio=0.5``: 1024 patches -> 256 tokens), then the
projector. The prompt holds, per image, ``<img>`` + ``tiles * 256`` ``<IMG_CONTEXT>`` tokens + ``</img>``.

What a method sees (:class:`~vlm_compress.views.VisualContext`): the image's tokens in prompt order (crops, then
the thumbnail). A one-tile image has a ``grid``; a tiled image has ``crops`` (one region per crop, with its
``(row, col)`` when the call passes ``image_sizes`` [original ``(height, width)`` per image] so the adapter can
recompute the processor's layout, else ``position=None``) and the ``thumbnail`` region.

Signals respect the pixel shuffle (naive per-patch [CLS] pruning reads the wrong patches):

- ``patch_features``: ``[N, 4, Dv]`` the four encoder patches each token is made of (feature layer);
  ``vision_features`` is their concatenation ``[N, 4 * Dv]``, exactly the projector's input.
- ``cls_attention``: the head-averaged attention of the tile's [CLS] query at the feature-layer block, **summed**
  over the token's four patches (each tile's tokens sum to the attention its patches receive; tiles are separate
  passes, as LLaVA-NeXT's crops are).
- ``cls_attention_logits``: the [CLS] query's pre-softmax logits at the tower's last block, head-averaged and
  **averaged** over the four patches (so they keep the scale of per-patch logits, GlobalCom²'s score).

Room: adapters. May import ``views``, ``errors``, the engine's data types, :mod:`.llava` (whose image-feature
plumbing InternVL's HF port shares) and the sibling helper modules.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..engine.sequence import ImageSlot
from ..errors import InputMismatchError, UnsupportedModelError
from ..views import Signals, TokenRegion
from . import text_signals
from .internvl_signals import InternVLSignals, shuffle_groups, tile_layout
from .llava import LlavaAdapter
from .placeholders import assign_image_slots, placeholder_runs


class InternVLAdapter(LlavaAdapter):
    def __init__(self, model, undo, options):
        super().__init__(model, undo, options)
        vision = self.config.vision_config
        side = vision.image_size[0] // vision.patch_size[0]
        # which encoder patches every token of a tile is made of: the model's own pixel shuffle of an index map
        self.groups = shuffle_groups(self.inner.pixel_shuffle, side, self.config.downsample_ratio)
        self.tile_tokens = int(self.groups.shape[0])
        self.token_side = int(round(self.tile_tokens**0.5))

    def available_signals(self) -> set[str]:
        return {
            "vision_features", "patch_features", "cls_attention", "cls_attention_logits"
        } | text_signals.available(self.tokenizer)

    def grid_for(self, num_tokens: int) -> tuple[int, int] | None:
        return (self.token_side, self.token_side) if num_tokens == self.tile_tokens else None

    def encode(self, call: dict[str, Any], is_image: torch.Tensor) -> list[ImageSlot]:
        if call.get("pixel_values_videos") is not None:
            raise UnsupportedModelError("video inputs are not compressed; pass images only (pixel_values)")
        pixel_values = call.pop("pixel_values")
        image_sizes = call.pop("image_sizes", None)
        feature_layer, strategy = self.pop_feature_options(call)
        if strategy != "default" or not isinstance(feature_layer, int):
            raise UnsupportedModelError(
                "InternVL is supported with vision_feature_select_strategy='default' and one int "
                f"vision_feature_layer (its pixel shuffle needs a square patch grid); got {strategy!r}, "
                f"{feature_layer!r}"
            )
        encoded, tiles = self.encode_images(pixel_values, feature_layer, strategy)
        runs = placeholder_runs(is_image)
        if any(n % self.tile_tokens for n in runs) or sum(runs) != len(tiles) * self.tile_tokens:
            raise InputMismatchError(
                f"the prompt's <IMG_CONTEXT> runs ({'+'.join(map(str, runs)) or 'none'} tokens) do not match the "
                f"{len(tiles)} tile(s) of pixel_values ({self.tile_tokens} tokens each); build the inputs with "
                "InternVLProcessor and one image placeholder per image"
            )
        tiles_per_image = [n // self.tile_tokens for n in runs]
        if image_sizes is not None and len(image_sizes) != len(tiles_per_image):
            raise InputMismatchError(
                f"image_sizes has {len(image_sizes)} entries but the prompt holds {len(tiles_per_image)} images"
            )
        placements = assign_image_slots(is_image, runs, placeholder="<IMG_CONTEXT>", prompt_images=len(runs))
        signals = InternVLSignals(self, call, encoded.hidden_states, feature_layer, self.groups, tiles_per_image)
        slots, first = [], 0
        for i, ((row, columns), count) in enumerate(zip(placements, tiles_per_image)):
            layout = None
            if count > 1 and image_sizes is not None:
                layout = tile_layout(image_sizes[i], count, self.image_processor, self.config.vision_config)
            context = self.image_context(
                i,
                row,
                torch.cat(tiles[first : first + count]),
                signals.providers(i, row, columns, is_image),
                grid=self.grid_for(count * self.tile_tokens),
            )
            if count > 1:
                context.thumbnail, context.crops = self._regions(i, count, layout, signals)
            slots.append(ImageSlot(row=row, columns=columns, context=context))
            first += count
        return slots

    def _regions(self, image: int, count: int, layout, signals) -> tuple[TokenRegion, list[TokenRegion]]:
        n, grid = self.tile_tokens, (self.token_side, self.token_side)

        def region(tile: int, position=None) -> TokenRegion:
            owner = f"image {image} " + ("thumbnail" if tile == count - 1 else f"crop {tile}")
            return TokenRegion(
                indices=torch.arange(tile * n, (tile + 1) * n),
                grid=grid,
                position=position,
                signals=Signals(signals.tile_providers(image, tile), owner=owner),
            )

        cols = layout[1] if layout is not None else None
        crops = [region(t, None if cols is None else (t // cols, t % cols)) for t in range(count - 1)]
        return region(count - 1), crops

    def pack_features(self, features, call):
        # InternVL scatters one [1, K, D] tensor over all placeholder tokens of the batch, in order
        packed = torch.cat(features)[None]
        call["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=packed)}
