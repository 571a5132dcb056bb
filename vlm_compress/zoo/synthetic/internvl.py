"""A tiny InternVL (``InternVLForConditionalGeneration``) and its real processor, offline.

Vision: a 2-block InternViT on 32-px tiles with 4-px patches (8x8 patches, pixel-shuffled into 4x4 = 16 tokens
per tile); text: the 3-layer Qwen2 of every tiny model. The processor is transformers' ``InternVLProcessor``
with the PIL ``GotOcr2ImageProcessorPil`` (dynamic tiling into at most 4 crops + a thumbnail) and a word-level
tokenizer holding InternVL's special tokens.

May import torch, transformers, PIL and the sibling :mod:`.tiny` / :mod:`.processors`.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .processors import random_prompts, word_tokenizer
from .tiny import TINY_IMAGE_TOKEN_ID, _pad_rows, _tiny_text_params

#: InternVL's special tokens at the tiny models' ids (the context token is the shared image token id)
TINY_INTERNVL_SPECIALS = {"<video>": 994, "<img>": 995, "</img>": 996, "<IMG_CONTEXT>": TINY_IMAGE_TOKEN_ID}
#: tokens per tile of the tiny InternVL: 8x8 patches pixel-shuffled 2x2
TINY_INTERNVL_TILE_TOKENS = 16
#: image sizes (h, w) the tiny InternVL inputs cycle through: 1x2, one tile, 2x1 and 2x2 crops
TINY_INTERNVL_IMAGE_SIZES = [(40, 70), (32, 32), (70, 36), (64, 64)]

#: "USER: <IMG_CONTEXT> question ASSISTANT:" (the processor expands the placeholder into <img>...</img>)
TINY_INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<IMG_CONTEXT> "
    "{% else %}{{ part['text'] }} {% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_internvl(attn_implementation: str, **overrides: Any):
    """InternViT 32x32-px tiles, 4-px patches, 2 blocks; 3-layer Qwen2 (``overrides`` go to the text config)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    )
    text = {"model_type": "qwen2", **_tiny_text_params(**overrides)}
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=TINY_IMAGE_TOKEN_ID,
        image_seq_length=TINY_INTERNVL_TILE_TOKENS,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn_implementation
    return InternVLForConditionalGeneration(config)


def tiny_internvl_processor(model, words: list[str] | None = None, *, padding_side: str = "left", max_patches=4):
    """A real ``InternVLProcessor`` for the tiny InternVL (without its video processor, which needs torchvision)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    side = model.config.vision_config.image_size[0]
    tokenizer = word_tokenizer(
        ["USER:", "ASSISTANT:", *(words or [f"w{i}" for i in range(200)])], special_tokens=TINY_INTERNVL_SPECIALS
    )
    tokenizer.padding_side = padding_side
    names = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}
    for name, token in {**names, "video_token": "<video>"}.items():
        setattr(tokenizer, name, token)
        setattr(tokenizer, f"{name}_id", TINY_INTERNVL_SPECIALS[token])
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": side, "width": side}, crop_to_patches=True, min_patches=1, max_patches=max_patches
    )
    return _image_only_internvl_processor_class()(
        image_processor,
        tokenizer,
        image_seq_length=model.config.image_seq_length,
        chat_template=TINY_INTERNVL_CHAT_TEMPLATE,
    )


def _image_only_internvl_processor_class():
    """``InternVLProcessor`` without its video processor (images are processed exactly as by the full one)."""
    from transformers import InternVLProcessor, ProcessorMixin

    class ImageOnlyInternVLProcessor(InternVLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, image_seq_length=256, chat_template=None, **kw):
            self.image_seq_length = image_seq_length
            self.start_image_token, self.end_image_token = tokenizer.start_image_token, tokenizer.end_image_token
            self.start_image_token_id = tokenizer.start_image_token_id
            self.end_image_token_id = tokenizer.end_image_token_id
            self.image_token, self.image_token_id = tokenizer.context_image_token, tokenizer.context_image_token_id
            self.video_token = tokenizer.video_token
            pattern = f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})"
            self.multimodal_pattern = re.compile(pattern)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyInternVLProcessor


def internvl_inputs(
    model,
    images_per_row: list[int],
    *,
    text_lengths: list[int] | None = None,
    padding_side: str = "left",
    seed: int = 0,
    sizes: list[tuple[int, int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Run the real processor on random images of the ``sizes`` (h, w) (default
    :data:`TINY_INTERNVL_IMAGE_SIZES`), in turn, so one batch mixes tile layouts: ``input_ids``, ``attention_mask``,
    ``pixel_values [tiles, 3, S, S]`` and ``image_sizes`` (the original sizes, which the adapter reads for the crop
    layout)."""
    processor = tiny_internvl_processor(model, padding_side=padding_side)
    texts, rows, used = random_prompts(
        images_per_row,
        placeholder="<IMG_CONTEXT>",
        sizes=sizes or TINY_INTERNVL_IMAGE_SIZES,
        text_lengths=text_lengths,
        seed=seed,
    )
    images = [image for row in rows for image in row]
    if not images:
        rows = [processor.tokenizer(text)["input_ids"] for text in texts]
        ids, mask = _pad_rows(rows, padding_side)
        return {"input_ids": ids, "attention_mask": mask}
    out = processor(images=images, text=texts, return_tensors="pt", padding=True)
    return {
        "input_ids": out["input_ids"],
        "attention_mask": out["attention_mask"],
        "pixel_values": out["pixel_values"],
        "image_sizes": torch.tensor(used),
    }


def internvl3_8b(layers: int, vision_layers: int):
    """InternVL3-8B's widths: InternViT-300M (1024 wide, 448-px tiles, 14-px patches, 256 tokens per tile after the
    pixel shuffle) and Qwen2.5-7B (3584 wide, GQA 28/4), with ``layers`` decoder layers."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    vision = dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=vision_layers,
        num_attention_heads=16,
        image_size=448,
        patch_size=14,
    )
    text = dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=layers,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=151674,
        max_position_embeddings=32768,
        pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )
    config = InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=TINY_IMAGE_TOKEN_ID, image_seq_length=256
    )
    return InternVLForConditionalGeneration(config)
