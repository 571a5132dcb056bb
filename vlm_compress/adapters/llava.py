"""LLaVA-1.5 (``LlavaForConditionalGeneration``, model_type ``llava``).

Each ``<image>`` of the prompt is expanded by the processor into ``N`` placeholder tokens (576 for LLaVA-1.5:
a 24x24 patch grid of a CLIP ViT-L/14-336, [CLS] dropped). The adapter encodes all images once with
``get_image_features`` (keeping the encoder's hidden states for the lazy signals), lets the method choose, and
hands the kept features back through ``mm_encoder_outputs``.

Pad-to-square: LLaVA-1.5's preprocessing pads a non-square image to a square with the image-mean colour before
resizing it. When the call passes ``image_sizes`` (one original ``(height, width)`` per image; not forwarded to
a CLIP tower, which does not take it) and the processor pads (``vlmc.compress(..., processor=processor)`` with
``image_processor.do_pad=True``; without a processor, sizes given are taken to mean padded images, as in the
original LLaVA repository), the ``padding_mask`` signal marks the tokens whose patch lies fully inside the padded
band, by the rule of MMTok's official ``calculate_padding_patch_indices``.

Room: adapters. May import ``views``, ``errors``, the engine's data types and its sibling helper modules.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..engine.sequence import ImageSlot
from ..errors import InputMismatchError
from . import text_signals, vision_towers
from .base import Adapter
from .placeholders import assign_image_slots
from .vision_towers import ImageSignals


def padding_patch_mask(image_size: Any, encoder_size: int, patch_size: int) -> torch.Tensor:
    """``[side * side]`` bool, row-major: the patches that lie fully inside the band that padding an image of
    ``image_size`` ``(height, width)`` to a square adds, once resized to ``encoder_size`` pixels.

    The rule of MMTok's official ``calculate_padding_patch_indices`` (``mmtok/llava/patch_llava.py``,
    ``include_overlap=False``): the short side scales to ``round(short * encoder_size / long)`` pixels, the band
    ``encoder_size - scaled`` splits ``floor(half)`` before / the rest after, and ``band // patch_size`` whole
    rows (or columns) on each side are padding.
    """
    height, width = (int(x) for x in image_size)
    side = encoder_size // patch_size
    mask = torch.zeros(side, side, dtype=torch.bool)
    if height == width:
        return mask.flatten()
    scaled = int(round(min(height, width) * (encoder_size / max(height, width))))
    before = (encoder_size - scaled) // 2
    after = encoder_size - scaled - before
    first, last = before // patch_size, after // patch_size
    # a wide image is padded above and below, a tall one left and right
    band = mask if width > height else mask.T
    band[:first] = True
    band[side - last :] = True
    return mask.flatten()


class LlavaAdapter(Adapter):
    def __init__(self, model, undo, options):
        super().__init__(model, undo, options)
        self.inner = model.model
        self.vision_tower = self.inner.vision_tower
        self.image_token_id = self.config.image_token_id

    def available_signals(self) -> set[str]:
        signals = {"vision_features", "padding_mask"} | text_signals.available(self.tokenizer)
        if vision_towers.has_cls_token(self.vision_tower):
            signals |= {"cls_attention", "cls_attention_logits", "vision_keys"}
        return signals

    @staticmethod
    def prompt_images(is_image: torch.Tensor, features: list[torch.Tensor]) -> int | None:
        """How many images the prompt's placeholders stand for: every image expands to the same number of
        tokens here, so placeholder tokens / tokens per image (``None`` when that does not divide)."""
        sizes = {f.shape[0] for f in features}
        total = int(is_image.sum())
        if len(sizes) != 1 or total % next(iter(sizes)):
            return None
        return total // next(iter(sizes))

    def grid_for(self, num_tokens: int) -> tuple[int, int] | None:
        vision_config = self.config.vision_config
        side = vision_config.image_size // vision_config.patch_size
        return (side, side) if side * side == num_tokens else None

    def pop_feature_options(self, call: dict[str, Any]) -> tuple[Any, str]:
        """The call's ``vision_feature_layer`` and ``vision_feature_select_strategy`` (the config's by default),
        popped from ``call``."""
        feature_layer = call.pop("vision_feature_layer", None)
        strategy = call.pop("vision_feature_select_strategy", None)
        feature_layer = self.config.vision_feature_layer if feature_layer is None else feature_layer
        strategy = self.config.vision_feature_select_strategy if strategy is None else strategy
        return feature_layer, strategy

    def encode_images(self, pixel_values: torch.Tensor, feature_layer: Any, strategy: str, **extra: Any):
        """One pass of the vision side (hidden states kept for the lazy signals); the per-image features are
        checked for NaN/inf. Returns the model's output and the features as a list."""
        encoded = self.inner.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=feature_layer,
            vision_feature_select_strategy=strategy,
            output_hidden_states=True,
            return_dict=True,
            **extra,
        )
        features = list(encoded.pooler_output)
        self.check_finite(features)
        return encoded, features

    def pads_to_square(self) -> bool:
        """Whether the images were padded to a square before resizing: the processor's ``do_pad`` when a
        processor was given, else assumed (the original LLaVA-1.5 preprocessing)."""
        image_processor = self.image_processor
        return image_processor is None or bool(getattr(image_processor, "do_pad", False))

    def padding_masks(self, image_sizes: Any, features: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Per image, the ``padding_mask`` signal (``None`` where it is not known)."""
        if image_sizes is None or not self.pads_to_square():
            return [None] * len(features)
        if len(image_sizes) != len(features):
            raise InputMismatchError(
                f"image_sizes has {len(image_sizes)} entries but the call has {len(features)} images; "
                "pass one original (height, width) per image"
            )
        vision = self.config.vision_config
        return [
            padding_patch_mask(size, vision.image_size, vision.patch_size).to(feats.device)
            if self.grid_for(feats.shape[0]) is not None
            else None
            for size, feats in zip(image_sizes, features)
        ]

    def encode(self, call: dict[str, Any], is_image: torch.Tensor) -> list[ImageSlot]:
        pixel_values = call.pop("pixel_values")
        feature_layer, strategy = self.pop_feature_options(call)
        extra = {}
        original_sizes = None
        if call.get("image_sizes") is not None:
            if getattr(self.config.vision_config, "model_type", None) == "pixtral":
                extra["image_sizes"] = call.pop("image_sizes")  # Pixtral's own (processed) sizes
            else:
                original_sizes = call.pop("image_sizes")
        encoded, features = self.encode_images(pixel_values, feature_layer, strategy, **extra)
        placements = assign_image_slots(
            is_image,
            [f.shape[0] for f in features],
            placeholder="<image>",
            prompt_images=self.prompt_images(is_image, features),
        )
        padding = self.padding_masks(original_sizes, features)
        hidden_states = encoded.hidden_states
        signals = ImageSignals(self, call, hidden_states, feature_layer, strategy)
        slots = []
        for i, ((row, columns), feats) in enumerate(zip(placements, features)):
            providers = signals.providers(i, row, columns, is_image)
            if padding[i] is not None:
                providers["padding_mask"] = lambda mask=padding[i]: mask
            context = self.image_context(i, row, feats, providers, grid=self.grid_for(feats.shape[0]))
            slots.append(ImageSlot(row=row, columns=columns, context=context))
        return slots

    def pack_features(self, features, call):
        call["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
