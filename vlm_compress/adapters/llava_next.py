"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``, model_type ``llava_next``): AnyRes images.

Every image is encoded as a *thumbnail* (the whole image at the encoder's resolution, ``s x s`` tokens) plus
high-resolution *crops* laid out ``rows x cols`` (``s x s`` tokens each). The crops are joined into one
``rows*s x cols*s`` grid, the padding the processor added around the image is cut off (``unpad_image``), and
an ``image_newline`` token closes every row of that grid. The language model sees, per image::

    [thumbnail s*s tokens] [grid row 0 ... newline] [grid row 1 ... newline] ...

What a method sees (:class:`~vlm_compress.views.VisualContext`):

- ``features``: the *content* tokens only (thumbnail, then the un-padded grid in raster order), no newlines;
  budgets count these. ``grid`` is ``None`` (the flat list is not one grid).
- ``thumbnail``: a :class:`~vlm_compress.views.TokenRegion` with its ``(s, s)`` grid and its own [CLS] attention.
- ``crops``: one region per crop in row-major layout order, ``position=(row, col)``, ``grid=(s, s)``, ``valid``
  the ``[s, s]`` mask of its un-padded tokens; ``indices`` and the signals cover the valid tokens only.
- ``cls_attention`` (flat): each token's attention in its own encoder pass (thumbnail or crop);
  ``cls_attention_logits`` likewise (the pre-softmax logits at the tower's last block). Both also per region.

Newline policy: a grid row keeps its newline when at least one of its tokens is kept and loses it otherwise,
so the compressed image still reads as rows ended by newlines; a selection with ``keep_newlines=False`` drops
every newline (MMTok's official layout). A reordering (``order="score"`` or
``"selection"``) applies to the thumbnail's tokens; the grid stays in raster order with its newlines
(this is also what GlobalCom²'s official code does), except when the selection drops every newline: then the
grid follows the selection's order too (VisionZip's official layout). Inside the language model (FastV, ToDRE stage 2) the
newline positions are not counted as visual: they always survive there, and budgets count content tokens.

The layout arithmetic and the per-pass signals live in :mod:`.anyres`.

Room: adapters. May import ``views``, ``errors``, the engine's data types, :mod:`.llava` (the family it
extends) and the sibling helper modules.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from ..engine.sequence import ImageSlot
from ..errors import InputMismatchError, InvalidFeaturesError, UnsupportedModelError
from ..views import Signals, TokenRegion
from .anyres import AnyResLayout, AnyResSignals, AnyResSlot, anyres_layout, newline_providers
from .llava import LlavaAdapter
from .placeholders import assign_image_slots


class LlavaNextAdapter(LlavaAdapter):
    def grid_for(self, num_tokens: int) -> tuple[int, int] | None:
        return None

    def available_signals(self) -> set[str]:
        # AnyRes crops the image instead of padding it to a square, and closes every grid row with a newline
        return super().available_signals() - {"padding_mask"} | {"newlines", "newline_slots"}

    def encode(self, call: dict[str, Any], is_image: torch.Tensor) -> list[ImageSlot]:
        pixel_values = call.pop("pixel_values")
        image_sizes = call.pop("image_sizes", None)
        if image_sizes is None:
            raise InputMismatchError(
                "LLaVA-NeXT needs image_sizes (one (height, width) per image) with pixel_values; "
                "build inputs with LlavaNextProcessor"
            )
        feature_layer, strategy = self.pop_feature_options(call)
        if strategy != "default":
            raise UnsupportedModelError(
                f"LLaVA-NeXT with vision_feature_select_strategy={strategy!r} is not supported: its crops only form "
                "a token grid with 'default' (the [CLS] token dropped)"
            )
        encoded, packed = self.encode_images(pixel_values, feature_layer, strategy, image_sizes=image_sizes)
        placements = assign_image_slots(is_image, [f.shape[0] for f in packed], placeholder="<image>")
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        pinpoints = self.config.image_grid_pinpoints
        first_patch, start = [], 0
        for size in image_sizes:
            first_patch.append(start)
            start += image_size_to_num_patches(size, pinpoints, vision.image_size)
        layouts = [anyres_layout(size, pinpoints, vision.image_size, side) for size in image_sizes]
        signals = AnyResSignals(
            self, call, encoded.hidden_states, feature_layer, strategy, layouts, first_patch
        )
        slots: list[ImageSlot] = []
        for i, ((row, columns), block, layout) in enumerate(zip(placements, packed, layouts)):
            if layout.num_tokens != block.shape[0]:
                raise InputMismatchError(
                    f"image {i}: the model packed {block.shape[0]} tokens but its size {image_sizes[i].tolist()} "
                    f"implies {layout.num_tokens}; check image_sizes and image_grid_pinpoints"
                )
            providers = {**signals.providers(i, row, columns, is_image), **newline_providers(block, layout)}
            thumbnail = TokenRegion(
                indices=torch.arange(layout.thumbnail_tokens),
                grid=(side, side),
                signals=Signals(signals.region_providers(i), owner=f"image {i} thumbnail"),
            )
            context = self.image_context(
                i,
                row,
                block[layout.content.to(block.device)],
                providers,
                thumbnail=thumbnail,
                crops=self._crop_regions(i, layout, signals),
            )
            slots.append(AnyResSlot(row=row, columns=columns, context=context, layout=layout, packed=block))
        return slots

    @staticmethod
    def _crop_regions(image: int, layout: AnyResLayout, signals: AnyResSignals) -> list[TokenRegion]:
        side = layout.side
        per_crop = side * side
        rows, cols = layout.crop_layout
        crop_of = layout.source // per_crop
        regions = []
        for c in range(rows * cols):
            mine = torch.nonzero(crop_of == c).flatten()
            local = layout.source[mine] % per_crop  # raster order within the crop
            valid = torch.zeros(per_crop, dtype=torch.bool)
            valid[local] = True
            regions.append(
                TokenRegion(
                    indices=mine + layout.thumbnail_tokens,
                    grid=(side, side),
                    position=(c // cols, c % cols),
                    valid=valid.view(side, side),
                    signals=Signals(
                        signals.region_providers(image, c, local),
                        owner=f"image {image} crop {c}",
                    ),
                )
            )
        return regions

    def non_visual_positions(self, slot: ImageSlot) -> torch.Tensor | None:
        """The newlines: in-LLM pruning counts content tokens only."""
        return slot.layout.newlines if isinstance(slot, AnyResSlot) else None

    def kept_layout(self, slot: ImageSlot) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept thumbnail tokens (in the selection's order), then the kept grid tokens in raster order with the
        newline of every grid row that keeps a token (the rows ``Selection.newline_rows`` names, if given). With
        ``Selection.keep_newlines=False`` no newline is kept and the grid tokens follow the selection's order too
        (in raster order for a method that keeps the original order)."""
        if not isinstance(slot, AnyResSlot):
            return super().kept_layout(slot)
        layout, packed, selection = slot.layout, slot.packed, slot.selection
        kept = selection.kept_indices.cpu()
        n = slot.context.num_tokens
        if selection.features is None and kept.numel() == n and bool((kept == torch.arange(n)).all()):
            return slot.columns, packed
        features = selection.features if selection.features is not None else slot.context.features[kept]
        in_thumbnail = kept < layout.thumbnail_tokens
        in_grid = ~in_thumbnail
        rows_kept = torch.unique(layout.grid_row[kept[in_grid]])
        if selection.newline_rows is not None:  # the method chose the newlines itself (DivPrune)
            rows_kept = selection.newline_rows.cpu()
            if rows_kept.numel() and not (
                int(rows_kept.min()) >= 0 and int(rows_kept.max()) < layout.newlines.numel()
            ):
                raise InvalidFeaturesError(
                    f"newline_rows must index the image's {layout.newlines.numel()} newlines, got {rows_kept.tolist()}"
                )
        elif not selection.keep_newlines:
            rows_kept = rows_kept[:0]
        newlines = layout.newlines[rows_kept]
        grid_positions = torch.cat([layout.content[kept[in_grid]], newlines])
        grid_features = torch.cat([features[in_grid.to(features.device)], packed[newlines.to(packed.device)]])
        if selection.keep_newlines or selection.newline_rows is not None:
            order = torch.argsort(grid_positions)  # rows ended by their newlines: raster order
        else:  # no newline left to keep the rows apart: the selection's order (VisionZip's official layout)
            order = torch.arange(grid_positions.numel())
        positions = torch.cat([layout.content[kept[in_thumbnail]], grid_positions[order]])
        block_features = torch.cat(
            [features[in_thumbnail.to(features.device)], grid_features[order.to(grid_features.device)]]
        )
        return slot.columns[positions.to(slot.columns.device)], block_features
