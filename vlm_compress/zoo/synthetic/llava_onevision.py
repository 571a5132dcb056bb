"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): a tiny random-weight model, its real processor
(offline) and inputs built with that processor.

SigLIP tower 32x32 px with 8-px patches (4x4 = 16 tokens per pass, no [CLS]), AnyRes crops laid out by
:data:`TINY_ONEVISION_PINPOINTS`, ``vision_aspect_ratio="anyres_max_2"`` so that 2x2-crop images exceed the
token cap and their grid is bilinearly downscaled, as the real model does past ``anyres_max_9``; 3-layer Qwen2.

May import torch, transformers, PIL and the sibling :mod:`.tiny` / :mod:`.processors`.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny import TINY_IMAGE_TOKEN_ID, _tiny_siglip_vision, _tiny_text_params

#: AnyRes resolutions (h, w) in pixels of the tiny OneVision: crop layouts 1x2, 2x1 and 2x2 of 32-px tiles
TINY_ONEVISION_PINPOINTS = [[32, 64], [64, 32], [64, 64]]
#: at most 2 crops' worth of grid tokens: the 2x2 layouts are downscaled (the real models use anyres_max_9)
TINY_ONEVISION_ASPECT = "anyres_max_2"
#: image sizes (h, w) the tiny inputs cycle through, with their token grids after un-padding: 2x2 crops -> 4x8;
#: 2x2 -> 8x6 downscaled to 6x4; 2x1 -> 6x4; 2x2 -> 8x8 downscaled to 5x5; 1x2 -> 4x8
TINY_ONEVISION_IMAGE_SIZES = [(40, 70), (61, 45), (50, 30), (64, 64), (30, 62)]
TINY_VIDEO_TOKEN_ID = 998


def build_tiny_onevision(attn_implementation: str, **overrides: Any):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
    )

    config = LlavaOnevisionConfig(
        vision_config=_tiny_siglip_vision(),
        text_config=Qwen2Config(**_tiny_text_params(**overrides)),
        image_token_index=TINY_IMAGE_TOKEN_ID,
        video_token_index=TINY_VIDEO_TOKEN_ID,
        image_grid_pinpoints=TINY_ONEVISION_PINPOINTS,
        vision_aspect_ratio=TINY_ONEVISION_ASPECT,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    config._attn_implementation = attn_implementation
    return LlavaOnevisionForConditionalGeneration(config)


#: the synthetic 7B shape's image (h, w): 1x2 crops of 384 px, 729 + 27 x 54 + 27 = 2,214 visual tokens
SYNTHETIC_ONEVISION_IMAGE = (384, 768)


def llava_onevision_7b(layers: int, vision_layers: int):
    """LLaVA-OneVision-Qwen2-7B's widths: SigLIP-so400m/14 at 384 px (729 tokens per pass, no [CLS], no head),
    AnyRes-max-9 over the default 384-px pinpoints, Qwen2-7B text; the tiny models' special token ids."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig

    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=vision_layers,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2",
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=layers,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=32768,
            pad_token_id=0,
        ),
        image_token_index=TINY_IMAGE_TOKEN_ID,
        video_token_index=TINY_VIDEO_TOKEN_ID,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    return LlavaOnevisionForConditionalGeneration(config)


def tiny_onevision_processor(model, words: list[str] | None = None, *, padding_side: str = "left"):
    """A real ``LlavaOnevisionProcessor`` for the tiny model (PIL image processor, word-level tokenizer, no video
    processor: the video one needs torchvision, which the core environment cannot have beside its CPU torch)."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from .processors import TINY_CHAT_TEMPLATE, word_tokenizer

    config = model.config
    side = config.vision_config.image_size
    specials = {"<video>": TINY_VIDEO_TOKEN_ID, "<image>": TINY_IMAGE_TOKEN_ID}
    tokenizer = word_tokenizer(
        ["USER:", "ASSISTANT:", *(words or [f"w{i}" for i in range(200)])], special_tokens=specials
    )
    tokenizer.padding_side = padding_side
    return _image_only_processor_class()(
        image_processor=LlavaOnevisionImageProcessorPil(
            size={"height": side, "width": side}, image_grid_pinpoints=config.image_grid_pinpoints
        ),
        tokenizer=tokenizer,
        num_image_tokens=(side // config.vision_config.patch_size) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_aspect_ratio=config.vision_aspect_ratio,
        chat_template=TINY_CHAT_TEMPLATE,
    )


def _image_only_processor_class():
    """``LlavaOnevisionProcessor`` without its video processor (images are processed exactly as by the full one)."""
    from transformers import LlavaOnevisionProcessor, ProcessorMixin

    class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.num_image_tokens = kwargs["num_image_tokens"]
            self.vision_feature_select_strategy = kwargs["vision_feature_select_strategy"]
            self.vision_aspect_ratio = kwargs["vision_aspect_ratio"]
            self.image_token, self.video_token = "<image>", "<video>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyLlavaOnevisionProcessor


def tiny_onevision_inputs(
    model,
    images_per_row: list[int],
    *,
    text_lengths: list[int] | None = None,
    padding_side: str = "left",
    seed: int = 0,
    image_sizes: list[tuple[int, int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Run the real processor on random images of ``image_sizes`` (default :data:`TINY_ONEVISION_IMAGE_SIZES`),
    in turn: ``input_ids``,
    ``attention_mask``, ``pixel_values [I, P, 3, 32, 32]``, ``image_sizes [I, 2]``, ``batch_num_images``.

    A row with several images is a multi-image prompt: as in the real processor, its images are not cropped
    (base image + one newline each)."""
    from .processors import random_prompts

    processor = tiny_onevision_processor(model, padding_side=padding_side)
    texts, images, _ = random_prompts(
        images_per_row,
        placeholder="<image>",
        sizes=image_sizes or TINY_ONEVISION_IMAGE_SIZES,
        text_lengths=text_lengths,
        seed=seed,
    )
    nested = [row for row in images if row]
    out = processor(images=nested or None, text=texts, return_tensors="pt", padding=True)
    inputs = {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
    if nested:
        for name in ("pixel_values", "image_sizes", "batch_num_images"):
            inputs[name] = out[name]
    return inputs
