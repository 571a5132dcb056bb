"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``, model_type ``llava_onevision``): AnyRes-max images
on a SigLIP tower.

The LLaVA-NeXT layout (:mod:`.llava_next`) with three differences, all taken from ``LlavaOnevisionModel``:

- **SigLIP, no [CLS]**: ``vision_feature_select_strategy="full"`` (every pass is ``s x s`` patch tokens; ``"default"``
  would drop a patch and is refused). ``cls_attention`` / ``cls_attention_logits`` are the proxies of
  :mod:`.siglip`: the head- and query-averaged attention each patch *receives* at the feature layer's block, and
  the query-averaged pre-softmax logits at the tower's last block.
- **AnyRes-max**: when the un-padded crop grid ``H x W`` holds more than ``anyres_max_K`` crops' worth of tokens
  (``sqrt(H * W / (K * s * s)) > 1.1``), the model downscales it bilinearly to ``int(H // ratio) x int(W // ratio)``
  before adding the row newlines. Per-token signals (``vision_features``, the attention proxies) go through the
  model's own ``pack_image_features`` (newline-free) in the same way, so they are read at the tokens the language
  model sees. A crop region then holds the grid tokens whose nearest source token lies in that crop; its
  ``valid`` mask marks those nearest source tokens (one per region token).
- **Multi-image prompts** (``batch_num_images`` > 1 for a prompt): as in the model, those images are not cropped;
  their block is the base image's ``s x s`` tokens and one closing ``image_newline``. The context has
  ``grid=(s, s)`` and no regions; the newline stays whenever the image keeps a token (with
  ``Selection.keep_newlines``).

Every AnyRes image exposes its base image as ``thumbnail`` and its crops as ``crops`` (so GlobalCom² runs on it);
the newline policy, re-padding and in-LLM handling are LLaVA-NeXT's. Videos (``pixel_values_videos``) are not
compressed: a call with them raises :class:`~vlm_compress.errors.UnsupportedModelError`.

Room: adapters. May import ``context``, ``errors``, the engine's data types, :mod:`.llava_next` (the family it
extends) and the sibling helper modules.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from ..engine.sequence import ImageSlot
from ..errors import InputMismatchError, UnsupportedModelError
from ..views import Signals, TokenRegion
from . import siglip
from .anyres import newline_providers
from .llava_next import AnyResLayout, AnyResSignals, AnyResSlot, LlavaNextAdapter, anyres_layout
from .placeholders import assign_image_slots


def grid_layout(
    source: torch.Tensor, thumbnail: int, crop_layout: tuple[int, int], side: int
) -> AnyResLayout:
    """The block layout of a ``thumbnail``-token base image followed by the grid ``source [H, W]`` (each grid token's
    index in the crops' flat tokens), every grid row closed by a newline."""
    height, width = source.shape
    row_starts = thumbnail + torch.arange(height) * (width + 1)
    grid_positions = (row_starts[:, None] + torch.arange(width)[None]).flatten()
    return AnyResLayout(
        content=torch.cat([torch.arange(thumbnail), grid_positions]),
        grid_row=torch.cat([torch.full((thumbnail,), -1), torch.arange(height).repeat_interleave(width)]),
        newlines=row_starts + width,
        source=source.flatten(),
        thumbnail_tokens=thumbnail,
        crop_layout=crop_layout,
        side=side,
    )


def onevision_layout(
    image_size: Any, pinpoints: list, encoder_size: int, side: int, max_crops: int
) -> AnyResLayout:
    """The layout ``LlavaOnevisionModel.pack_image_features`` gives an AnyRes image: LLaVA-NeXT's, with the
    un-padded grid downscaled past ``max_crops`` crops' worth of tokens (each token's ``source``: the nearest)."""
    layout = anyres_layout(image_size, pinpoints, encoder_size, side)
    height = layout.newlines.numel()
    width = (layout.content.numel() - layout.thumbnail_tokens) // height
    ratio = math.sqrt(height * width / (max_crops * side**2))
    if ratio <= 1.1:
        return layout
    new_height, new_width = int(height // ratio), int(width // ratio)
    rows = ((torch.arange(new_height) + 0.5) * height / new_height).long()
    cols = ((torch.arange(new_width) + 0.5) * width / new_width).long()
    source = layout.source.view(height, width)[rows[:, None], cols[None]]
    return grid_layout(source, layout.thumbnail_tokens, layout.crop_layout, side)


def base_layout(side: int) -> AnyResLayout:
    """An image of a multi-image prompt: ``s * s`` base tokens and one closing newline, no crops."""
    tokens = side * side
    return AnyResLayout(
        content=torch.arange(tokens),
        grid_row=torch.full((tokens,), -1),
        newlines=torch.tensor([tokens]),
        source=torch.zeros(0, dtype=torch.long),
        thumbnail_tokens=tokens,
        crop_layout=(0, 0),
        side=side,
    )


def max_crops_of(vision_aspect_ratio: str) -> int:
    """``"anyres_max_9"`` -> 9, the crops' worth of grid tokens past which the grid is downscaled."""
    count = vision_aspect_ratio.removeprefix("anyres_max_")
    if not count.isdigit():
        raise UnsupportedModelError(
            f"vision_aspect_ratio={vision_aspect_ratio!r} is not supported; expected 'anyres_max_<N>'"
        )
    return int(count)


class LlavaOnevisionAdapter(LlavaNextAdapter):
    image_inputs: ClassVar[tuple[str, ...]] = ("pixel_values", "pixel_values_videos")

    def available_signals(self) -> set[str]:
        return super().available_signals() | {"cls_attention", "cls_attention_logits"}

    def encode(self, call: dict[str, Any], is_image: torch.Tensor) -> list[ImageSlot]:
        if call.get("pixel_values_videos") is not None:
            raise UnsupportedModelError(
                "LLaVA-OneVision video inputs (pixel_values_videos) are not compressed; pass images only"
            )
        pixel_values, image_sizes = call.pop("pixel_values"), call.pop("image_sizes", None)
        if image_sizes is None:
            raise InputMismatchError(
                "LLaVA-OneVision needs image_sizes (one (height, width) per image) with pixel_values; "
                "build inputs with LlavaOnevisionProcessor"
            )
        batch_num_images = call.pop("batch_num_images", None)
        aspect = call.pop("vision_aspect_ratio", None) or self.config.vision_aspect_ratio
        feature_layer, strategy = self.pop_feature_options(call)
        if strategy != "full":
            raise UnsupportedModelError(
                f"LLaVA-OneVision with vision_feature_select_strategy={strategy!r} is not supported: its SigLIP "
                "tower has no [CLS] token, so only 'full' keeps every patch of the grid"
            )
        encoded, packed = self.encode_images(
            pixel_values,
            feature_layer,
            strategy,
            image_sizes=image_sizes,
            batch_num_images=batch_num_images,
            vision_aspect_ratio=aspect,
        )
        placements = assign_image_slots(is_image, [f.shape[0] for f in packed], placeholder="<image>")
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        pinpoints = self.config.image_grid_pinpoints
        cropped = [True] * len(image_sizes)
        if batch_num_images is not None:
            cropped = [int(n) == 1 for n in batch_num_images for _ in range(int(n))]
        max_crops = max_crops_of(aspect)
        layouts, passes = [], []
        for size, crops in zip(image_sizes, cropped):
            if crops:
                layouts.append(onevision_layout(size, pinpoints, vision.image_size, side, max_crops))
                passes.append(image_size_to_num_patches(size, pinpoints, vision.image_size))
            else:
                layouts.append(base_layout(side))
                passes.append(1)
        signals = OnevisionSignals(
            self, call, encoded.hidden_states, feature_layer, layouts, passes, image_sizes, aspect
        )
        slots: list[ImageSlot] = []
        for i, ((row, columns), block, layout) in enumerate(zip(placements, packed, layouts)):
            if layout.num_tokens != block.shape[0]:
                raise InputMismatchError(
                    f"image {i}: the model packed {block.shape[0]} tokens but its size {image_sizes[i].tolist()} "
                    f"implies {layout.num_tokens}; check image_sizes, batch_num_images and image_grid_pinpoints"
                )
            thumbnail = crops = None
            if cropped[i]:
                thumbnail = TokenRegion(
                    indices=torch.arange(layout.thumbnail_tokens),
                    grid=(side, side),
                    signals=Signals(signals.region_providers(i), owner=f"image {i} thumbnail"),
                )
                crops = self._crop_regions(i, layout, signals)
            context = self.image_context(
                i,
                row,
                block[layout.content.to(block.device)],
                {**signals.providers(i, row, columns, is_image), **newline_providers(block, layout)},
                grid=None if cropped[i] else (side, side),
                thumbnail=thumbnail,
                crops=crops,
            )
            slots.append(AnyResSlot(row=row, columns=columns, context=context, layout=layout, packed=block))
        return slots

    def kept_layout(self, slot: ImageSlot) -> tuple[torch.Tensor, torch.Tensor]:
        """LLaVA-NeXT's layout; an uncropped image (multi-image prompt) keeps its closing newline."""
        columns, features = super().kept_layout(slot)
        layout = slot.layout
        selection = slot.selection
        if layout.content.numel() > layout.thumbnail_tokens or not selection.keep_newlines:
            return columns, features
        if selection.newline_rows is not None:  # the method chose the newline itself
            return columns, features
        newline = slot.columns[layout.newlines.to(slot.columns.device)]
        if bool(torch.isin(newline, columns).any()):
            return columns, features
        newline_feature = slot.packed[layout.newlines.to(slot.packed.device)]
        return torch.cat([columns, newline]), torch.cat([features, newline_feature.to(features.dtype)])


class OnevisionSignals(AnyResSignals):
    """:class:`AnyResSignals` read through the model's own packing (un-padding and AnyRes-max downscaling), with
    the SigLIP attention proxies; a region's signals are the image's flat signals at the region's tokens."""

    def __init__(self, adapter, call, hidden_states, feature_layer, layouts, passes, image_sizes, aspect):
        first_pass = [sum(passes[:i]) for i in range(len(passes))]
        super().__init__(adapter, call, hidden_states, feature_layer, "full", layouts, first_pass)
        self.passes = passes
        self.image_sizes = image_sizes
        self.aspect = aspect
        self._flat: dict[tuple[int, str], torch.Tensor] = {}

    def per_image(self, image: int, per_pass: torch.Tensor) -> torch.Tensor:
        """``[P, T, ...]`` per-pass values -> ``[N, ...]`` over the image's content tokens, packed as the model packs
        its features (without newlines)."""
        first = self.first_patch[image]
        values = per_pass[first : first + self.passes[image]]
        scalar = values.ndim == 2
        values = values[..., None] if scalar else values
        packed, _ = self.adapter.inner.pack_image_features(
            [values], self.image_sizes[image : image + 1], image_newline=None, vision_aspect_ratio=self.aspect
        )
        return packed[0][..., 0] if scalar else packed[0]

    def cls_attention(self) -> torch.Tensor:
        if self._cls is None:
            self._cls = siglip.attention_received(
                self.vision_tower, self.hidden_states, self.feature_layers[-1]
            )
        return self._cls

    def cls_attention_logits(self) -> torch.Tensor:
        if self._cls_logits is None:
            self._cls_logits = siglip.mean_query_logits(self.vision_tower, self.hidden_states)
        return self._cls_logits

    def flat(self, image: int, name: str) -> torch.Tensor:
        if (image, name) not in self._flat:
            self._flat[(image, name)] = self.per_image(image, getattr(self, name)())
        return self._flat[(image, name)]

    def providers(
        self, image: int, row: int, columns: torch.Tensor, is_image: torch.Tensor
    ) -> dict[str, Any]:
        providers = super().providers(image, row, columns, is_image)
        for name in ("cls_attention", "cls_attention_logits"):
            providers[name] = lambda name=name: self.flat(image, name)
        return providers

    def region_providers(self, image: int, crop: int | None = None, local: torch.Tensor | None = None):
        layout = self.layouts[image]
        if crop is None:
            indices = torch.arange(layout.thumbnail_tokens)
        else:
            per_crop = layout.side**2
            indices = layout.thumbnail_tokens + torch.nonzero(layout.source // per_crop == crop).flatten()
        return {
            name: lambda name=name: self.flat(image, name)[indices.to(self.flat(image, name).device)]
            for name in ("cls_attention", "cls_attention_logits")
        }
