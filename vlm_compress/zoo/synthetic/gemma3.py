"""Gemma 3 (``Gemma3ForConditionalGeneration``): a tiny random-weight model, its real processor (offline) and
inputs built with that processor.

SigLIP tower 32x32 px with 4-px patches (8x8 = 64 patches, no [CLS]), average-pooled 2x2 by the projector into
4x4 = 16 image tokens per image (the real model pools 64x64 patches into 256); a 3-layer Gemma 3 text model with
two sliding-window layers and one global layer, 16-d heads. Every image is ``<start_of_image>``, 16
``<image_soft_token>`` and ``<end_of_image>``; the processor's ``token_type_ids`` mark the soft tokens, which
attend to each other bidirectionally inside the language model.

May import torch, transformers, PIL and the sibling :mod:`.tiny` / :mod:`.processors`.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny import TINY_IMAGE_TOKEN_ID, _tiny_siglip_vision, _tiny_text_params

#: Gemma 3's image delimiters at the tiny ids (the soft image token is the shared tiny image token id)
TINY_GEMMA3_TOKENS = {
    "<start_of_image>": 996,
    "<end_of_image>": 997,
    "<image_soft_token>": TINY_IMAGE_TOKEN_ID,
}
#: image sizes (h, w) in pixels the tiny inputs cycle through (every image is resized to 32 x 32)
TINY_GEMMA3_IMAGE_SIZES = [(40, 70), (32, 32), (50, 30)]


def build_tiny_gemma3(attn_implementation: str, **overrides: Any):
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
    )

    text = _tiny_text_params(
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=128,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    )
    text.update(overrides)
    if "num_hidden_layers" in overrides and "layer_types" not in overrides:
        text["layer_types"] = [
            "full_attention" if (i + 1) % 3 == 0 else "sliding_attention"
            for i in range(text["num_hidden_layers"])
        ]
    config = Gemma3Config(
        text_config=Gemma3TextConfig(**text),
        vision_config=_tiny_siglip_vision(patch_size=4),
        mm_tokens_per_image=16,
        boi_token_index=TINY_GEMMA3_TOKENS["<start_of_image>"],
        eoi_token_index=TINY_GEMMA3_TOKENS["<end_of_image>"],
        image_token_index=TINY_IMAGE_TOKEN_ID,
    )
    config._attn_implementation = attn_implementation
    return Gemma3ForConditionalGeneration(config)


def gemma3_4b(layers: int, vision_layers: int):
    """Gemma-3-4B's widths: SigLIP-so400m/14 at 896 px (64 x 64 patches pooled 4 x 4 into 256 tokens), Gemma 3
    text 2560 wide (8 heads of 256, 4 KV heads, a 1024-token sliding window on five layers of six); the tiny
    models' image token ids."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    config = Gemma3Config(
        text_config=dict(
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=layers,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            query_pre_attn_scalar=256,
            vocab_size=262208,
            sliding_window=1024,
            layer_types=[
                "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)
            ],
            pad_token_id=0,
        ),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=vision_layers,
            num_attention_heads=16,
            image_size=896,
            patch_size=14,
            vision_use_head=False,
        ),
        mm_tokens_per_image=256,
        boi_token_index=TINY_GEMMA3_TOKENS["<start_of_image>"],
        eoi_token_index=TINY_GEMMA3_TOKENS["<end_of_image>"],
        image_token_index=TINY_IMAGE_TOKEN_ID,
    )
    return Gemma3ForConditionalGeneration(config)


def tiny_gemma3_processor(model, words: list[str] | None = None, *, padding_side: str = "left"):
    """A real ``Gemma3Processor`` for the tiny model (PIL image processor, word-level tokenizer carrying Gemma 3's
    image tokens as the processor expects them)."""
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from .processors import TINY_CHAT_TEMPLATE, word_tokenizer

    config = model.config
    side = config.vision_config.image_size
    tokenizer = word_tokenizer(
        ["USER:", "ASSISTANT:", *(words or [f"w{i}" for i in range(200)])], special_tokens=TINY_GEMMA3_TOKENS
    )
    tokenizer.padding_side = padding_side
    for name, token in (
        ("boi", "<start_of_image>"),
        ("eoi", "<end_of_image>"),
        ("image", "<image_soft_token>"),
    ):
        setattr(tokenizer, f"{name}_token", token)
        setattr(tokenizer, f"{name}_token_id", TINY_GEMMA3_TOKENS[token])
    return Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": side, "width": side}),
        tokenizer=tokenizer,
        image_seq_length=config.mm_tokens_per_image,
        chat_template=TINY_CHAT_TEMPLATE.replace("<image>", "<start_of_image>"),
    )


def tiny_gemma3_inputs(
    model,
    images_per_row: list[int],
    *,
    text_lengths: list[int] | None = None,
    padding_side: str = "left",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Run the real processor on random images of :data:`TINY_GEMMA3_IMAGE_SIZES` (in turn): ``input_ids``,
    ``attention_mask``, ``token_type_ids`` and ``pixel_values [I, 3, 32, 32]``."""
    from .processors import random_prompts

    processor = tiny_gemma3_processor(model, padding_side=padding_side)
    texts, images, _ = random_prompts(
        images_per_row,
        placeholder="<start_of_image>",
        sizes=TINY_GEMMA3_IMAGE_SIZES,
        text_lengths=text_lengths,
        seed=seed,
    )
    # a text-only row keeps its empty list: the processor counts images per prompt
    any_image = any(images)
    out = processor(images=images if any_image else None, text=texts, return_tensors="pt", padding=True)
    inputs = {k: out[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in out}
    if any_image:
        inputs["pixel_values"] = out["pixel_values"]
    return inputs
