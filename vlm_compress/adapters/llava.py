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
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..context import VisualContext, _LazySignals
from ..errors import InputMismatchError
from . import text_signals, vision_towers
from .base import Adapter, ImageSlot
from .vit_tap import recorded_scale_weights


def placeholder_blocks(is_image: torch.Tensor) -> int:
    """How many separate runs of placeholder tokens ``is_image [B, L]`` holds (placeholders of two images that
    touch form one run)."""
    starts = torch.nn.functional.pad(is_image.int(), (1, 0)).diff(dim=1) == 1
    return int(starts.sum())


def assign_image_slots(
    is_image: torch.Tensor, tokens_per_image: list[int], *, placeholder: str, prompt_images: int | None = None
) -> list[tuple[int, torch.Tensor]]:
    """Give every image, in batch order, the next ``tokens_per_image[i]`` placeholder columns of its row.

    ``is_image: [B, L]`` -> ``[(row, columns [N_i])]``. Raises :class:`InputMismatchError` when the number of
    placeholders does not match the images, or an image's placeholders would straddle two rows.
    ``prompt_images``: how many images the prompt's placeholders stand for, when the adapter can tell (for the
    message); otherwise the message counts the separate runs of placeholder tokens.
    """
    per_row = [torch.nonzero(row).flatten() for row in is_image]
    total_tokens, total_needed = int(is_image.sum()), sum(tokens_per_image)
    if total_tokens != total_needed:
        images = len(tokens_per_image)
        if prompt_images is not None:
            relation = "more" if prompt_images > images else "fewer"
            head = (
                f"the prompt has {relation} image placeholders than images: {prompt_images} {placeholder} "
                f"placeholder(s) for {images} image(s)"
            )
        else:
            head = (
                f"the prompt's {placeholder} placeholders ({placeholder_blocks(is_image)} separate run(s) of "
                f"tokens) do not match the {images} image(s) given"
            )
        raise InputMismatchError(
            f"{head}: the {images} image(s) give {total_needed} visual tokens "
            f"({'+'.join(map(str, tokens_per_image))}) but the prompt holds {total_tokens} {placeholder} placeholder "
            f"tokens; put exactly one {placeholder} in the text per image and build the inputs with the model's "
            "processor"
        )
    slots, row, used = [], 0, 0
    for i, n in enumerate(tokens_per_image):
        while row < len(per_row) and used == per_row[row].numel():
            row, used = row + 1, 0
        if row >= len(per_row) or used + n > per_row[row].numel():
            raise InputMismatchError(
                f"image {i}'s {n} placeholder tokens do not fit in prompt row {row}; each row must hold whole images"
            )
        slots.append((row, per_row[row][used : used + n]))
        used += n
    return slots


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
    model_types = ("llava",)

    def __init__(self, model, handle):
        super().__init__(model, handle)
        self.inner = model.model
        self.vision_tower = self.inner.vision_tower
        self.image_token_id = self.config.image_token_id

    def available_signals(self) -> set[str]:
        signals = {"vision_features", "padding_mask"} | text_signals.available(self.handle)
        if vision_towers.has_cls_token(self.vision_tower):
            signals |= {"cls_attention", "cls_attention_logits"}
        return signals

    def image_token_mask(self, input_ids, inputs_embeds):
        if input_ids is not None:
            return input_ids == self.image_token_id
        image_embed = self.model.get_input_embeddings()(
            torch.tensor(self.image_token_id, device=inputs_embeds.device)
        ).to(inputs_embeds.dtype)
        return (inputs_embeds == image_embed).all(dim=-1)

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
        image_processor = self.handle.image_processor
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
            context = VisualContext(
                features=feats,
                grid=self.grid_for(feats.shape[0]),
                image_index=i,
                row=row,
                model_type=self.config.model_type,
                signals=_LazySignals(providers, owner=f"image {i}"),
            )
            slots.append(ImageSlot(row=row, columns=columns, context=context))
        return slots

    def pack_features(self, features, call):
        call["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}


class ImageSignals(text_signals.PromptSignals):
    """Lazy signals of the images of one call; batched across images and computed at most once."""

    def __init__(self, adapter: Adapter, call: dict[str, Any], hidden_states, feature_layer, strategy: str):
        super().__init__(adapter, call)
        self.hidden_states = hidden_states
        self.feature_layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
        self.drop_cls = strategy == "default"
        self._cls: torch.Tensor | None = None
        self._cls_logits: torch.Tensor | None = None
        self._tap = self._tap_weights()

    def _tap_weights(self) -> torch.Tensor | None:
        """``[passes, patches, K]`` scale weights that TAP modules inserted into the tower (``vlmc.insert_tap``)
        recorded in this call's encoder pass, for the ``tap`` compressor; ``None`` without TAP."""
        weights = recorded_scale_weights(self.adapter.vision_tower)
        passes, tokens = self.hidden_states[0].shape[:2]
        patches = tokens - self._start()
        if weights is None or weights.shape[0] != passes or weights.shape[1] not in (patches, patches + 1):
            return None
        return weights[:, weights.shape[1] - patches :]

    def per_image(self, image: int, per_pass: torch.Tensor) -> torch.Tensor:
        """Per-encoder-pass values ``[passes, patches, ...]`` -> the image's tokens (one pass per image here)."""
        return per_pass[image]

    def providers(self, image: int, row: int, columns: torch.Tensor, is_image: torch.Tensor) -> dict[str, Any]:
        providers = {
            "vision_features": lambda: self.vision_features(image),
            "cls_attention": lambda: self.per_image(image, self.cls_attention()),
            "cls_attention_logits": lambda: self.per_image(image, self.cls_attention_logits()),
            **self.text_providers(row, columns, is_image),
        }
        if self._tap is not None:
            providers["tap_scale_weights"] = lambda: self.per_image(image, self._tap)
        return providers

    def _start(self) -> int:
        return 1 if self.drop_cls else 0

    def vision_features(self, image: int) -> torch.Tensor:
        layers = [self.hidden_states[layer][image, self._start() :] for layer in self.feature_layers]
        return torch.cat(layers, dim=-1)

    def cls_attention(self) -> torch.Tensor:
        if self._cls is None:
            tower = self.adapter.vision_tower
            self._cls = vision_towers.cls_attention(tower, self.hidden_states, self.feature_layers[-1])[
                :, self._start() :
            ]
        return self._cls

    def cls_attention_logits(self) -> torch.Tensor:
        """``[passes, patches]`` head-mean [CLS] logits at the tower's last block, from this call's hidden states."""
        if self._cls_logits is None:
            tower = self.adapter.vision_tower
            self._cls_logits = vision_towers.cls_attention_logits(tower, self.hidden_states)[
                :, self._start() :
            ]
        return self._cls_logits
