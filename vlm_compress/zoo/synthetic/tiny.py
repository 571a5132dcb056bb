"""Tiny random-weight models and hand-built inputs for them: the test suite's models.

Real transformers classes (``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``,
``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``) with small widths, so everything that
works on them runs the same code paths as a HuggingFace checkpoint. May import torch and transformers only (and
:mod:`.processors` lazily, for the LLaVA-NeXT inputs that go through a real processor).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

TINY_IMAGE_TOKEN_ID = 999
TINY_VOCAB = 1000


def _tiny_text_params(**overrides: Any) -> dict[str, Any]:
    """The language model of every tiny model: 3 layers, 64 wide, GQA 4/2, vocabulary 1000."""
    params = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=TINY_VOCAB,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        max_position_embeddings=2048,
    )
    params.update(overrides)
    return params


def _tiny_text_config(**overrides: Any):
    from transformers import LlamaConfig

    return LlamaConfig(**_tiny_text_params(**overrides))


def _pad_rows(rows: list[list[int]], padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> ``input_ids`` and ``attention_mask``, padded with id 0 on ``padding_side``."""
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
        ids[b, span] = torch.tensor(row)
        mask[b, span] = 1
    return ids, mask


#: the widths of every tiny CLIP / SigLIP tower: 2 blocks, 32 wide, 8-px patches
_TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8)


def _tiny_clip_vision(**overrides: Any):
    """The CLIP tower of the tiny LLaVA family (96-px images unless overridden)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**{**_TINY_TOWER, "image_size": 96, **overrides})


def _tiny_siglip_vision(**overrides: Any):
    """The SigLIP tower of the tiny LLaVA-OneVision and Gemma 3 (no [CLS], no pooling head), 32-px images."""
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(**{**_TINY_TOWER, "image_size": 32, "vision_use_head": False, **overrides})


def _build_llava(attn_implementation: str, **overrides: Any):
    """CLIP tower 96x96 px with 8-px patches (12x12 = 144 visual tokens), 3-layer Llama."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=_tiny_clip_vision(),
        text_config=_tiny_text_config(**overrides),
        image_token_id=TINY_IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    config._attn_implementation = attn_implementation
    return LlavaForConditionalGeneration(config)


#: Qwen2-VL special tokens of the tiny models (the image pad token is the shared image token id)
TINY_QWEN_TOKENS = {"vision_start_token_id": 996, "vision_end_token_id": 997, "video_token_id": 998}
#: (t, h, w) patch grids of the tiny Qwen images, cycled: different resolutions in one batch
TINY_QWEN_GRIDS = ((1, 8, 8), (1, 12, 8), (1, 8, 12))


def _build_qwen(model_type: str, attn_implementation: str, **overrides: Any):
    """Vision: 2 blocks, 4-px patches, 2x2 merger (an 8x8-patch image gives 16 visual tokens);
    text: 3-layer Qwen2 with 3-D M-RoPE (head_dim 16, mrope_section 2+3+3)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text = _tiny_text_params(rope_parameters=rope, **overrides)
    vision = dict(
        depth=2, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3
    )
    if model_type == "qwen2_vl":
        vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
        config_cls, model_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    else:
        vision.update(
            hidden_size=32,
            out_hidden_size=64,
            intermediate_size=64,
            window_size=16,
            fullatt_block_indexes=[1],
        )
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    config = config_cls(
        vision_config=vision, text_config=text, image_token_id=TINY_IMAGE_TOKEN_ID, **TINY_QWEN_TOKENS
    )
    config._attn_implementation = attn_implementation
    return model_cls(config)


#: LLaVA-NeXT's tiny AnyRes resolutions (h, w) in pixels: crop layouts 1x2, 2x1 and 2x2 of 32-px tiles
TINY_GRID_PINPOINTS = [[32, 64], [64, 32], [64, 64]]


def _build_llava_next(attn_implementation: str, **overrides: Any):
    """CLIP tower 32x32 px with 8-px patches (a 4x4 = 16-token thumbnail and 16 tokens per crop), crops laid
    out by :data:`TINY_GRID_PINPOINTS`, 3-layer Llama."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig(
        vision_config=_tiny_clip_vision(image_size=32),
        text_config=_tiny_text_config(**overrides),
        image_token_id=TINY_IMAGE_TOKEN_ID,
        image_grid_pinpoints=TINY_GRID_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    config._attn_implementation = attn_implementation
    return LlavaNextForConditionalGeneration(config)


def _family(name: str):
    """A family's own module of this package (imported on first use: it builds on this one)."""
    return importlib.import_module(f"{__package__}.{name}")


#: model_type -> builder(attn_implementation, **text_config_overrides); each adapter adds its tiny model here
BUILDERS: dict[str, Any] = {
    "llava": _build_llava,
    "llava_next": _build_llava_next,
    "qwen2_vl": lambda attn, **kw: _build_qwen("qwen2_vl", attn, **kw),
    "qwen2_5_vl": lambda attn, **kw: _build_qwen("qwen2_5_vl", attn, **kw),
    "qwen3_vl": lambda attn, **kw: _family("qwen3_vl").build_qwen3_vl("qwen3_vl", attn, **kw),
    "qwen3_vl_moe": lambda attn, **kw: _family("qwen3_vl").build_qwen3_vl("qwen3_vl_moe", attn, **kw),
    "llava_onevision": lambda attn, **kw: _family("llava_onevision").build_tiny_onevision(attn, **kw),
    "gemma3": lambda attn, **kw: _family("gemma3").build_tiny_gemma3(attn, **kw),
    "internvl": lambda attn, **kw: _family("internvl").build_internvl(attn, **kw),
}


def build_tiny(
    model_type: str = "llava", *, seed: int = 0, attn_implementation: str = "sdpa", **overrides: Any
):
    """A tiny random-weight model of ``model_type`` in eval mode (fp32, CPU); see the ``_build_*`` builders.

    ``overrides`` go to the language model's config (e.g. ``num_hidden_layers=6``).
    """
    if model_type not in BUILDERS:
        raise ValueError(f"no tiny builder for model_type {model_type!r}; available: {', '.join(BUILDERS)}")
    torch.manual_seed(seed)
    model = BUILDERS[model_type](attn_implementation, **overrides)
    model.generation_config.pad_token_id = 0
    return model.eval()


def _inputs_llava(
    model,
    images_per_row: list[int],
    *,
    text_lengths: list[int] | None = None,
    padding_side: str = "left",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Each row ``BOS, text, <image> x N per image, text``, padded with id 0 on ``padding_side``; one
    ``pixel_values`` image per ``<image>``."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    image_size = config.vision_config.image_size
    patches = (image_size // config.vision_config.patch_size) ** 2
    text_lengths = text_lengths or [3 + 2 * i for i in range(len(images_per_row))]
    rows = []
    for count, text_length in zip(images_per_row, text_lengths):
        words = torch.randint(
            3, TINY_VOCAB - 1, (text_length + 2 * max(count, 1),), generator=generator
        ).tolist()
        row = [1] + words[:text_length]
        for i in range(count):
            row += [config.image_token_id] * patches + words[text_length + 2 * i : text_length + 2 * i + 2]
        rows.append(row)
    ids, mask = _pad_rows(rows, padding_side)
    pixel_values = torch.randn(sum(images_per_row), 3, image_size, image_size, generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values}


def _inputs_qwen(
    model,
    images_per_row: list[int],
    *,
    text_lengths: list[int] | None = None,
    padding_side: str = "left",
    seed: int = 0,
    grids: tuple[tuple[int, int, int], ...] = TINY_QWEN_GRIDS,
) -> dict[str, torch.Tensor]:
    """Each row ``BOS, text, (<vision_start>, <image_pad> x t*h*w/4, <vision_end>, text) per image`` with the
    image grids cycling through ``grids`` (default :data:`TINY_QWEN_GRIDS`); ``pixel_values`` are flattened patches
    ``[sum(t*h*w), C * temporal * patch^2]`` as the Qwen2-VL image processor returns them, plus
    ``image_grid_thw`` and ``mm_token_type_ids``."""
    generator = torch.Generator().manual_seed(seed)
    vision = model.config.vision_config
    unit = vision.spatial_merge_size**2
    text_lengths = text_lengths or [3 + 2 * i for i in range(len(images_per_row))]
    rows, used = [], []
    for count, text_length in zip(images_per_row, text_lengths):
        words = torch.randint(
            3, TINY_VOCAB - 10, (text_length + 2 * max(count, 1),), generator=generator
        ).tolist()
        row = [1] + words[:text_length]
        for i in range(count):
            grid = grids[len(used) % len(grids)]
            used.append(grid)
            tokens = grid[0] * grid[1] * grid[2] // unit
            row += [TINY_QWEN_TOKENS["vision_start_token_id"]] + [TINY_IMAGE_TOKEN_ID] * tokens
            row += [TINY_QWEN_TOKENS["vision_end_token_id"]] + words[
                text_length + 2 * i : text_length + 2 * i + 2
            ]
        rows.append(row)
    ids, mask = _pad_rows(rows, padding_side)
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    patches = sum(t * h * w for t, h, w in used)
    out = {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": (ids == TINY_IMAGE_TOKEN_ID).int(),
    }
    if used:
        out["pixel_values"] = torch.randn(patches, patch_dim, generator=generator)
        out["image_grid_thw"] = torch.tensor(used)
    return out


#: image sizes (h, w) in pixels that the tiny LLaVA-NeXT inputs cycle through: every crop layout, with padding
TINY_NEXT_IMAGE_SIZES = [(40, 70), (50, 30), (32, 32), (64, 64), (61, 45)]


def _inputs_llava_next(
    model,
    images_per_row: list[int],
    *,
    text_lengths: list[int] | None = None,
    padding_side: str = "left",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Run a real ``LlavaNextProcessor`` on random images of the sizes in :data:`TINY_NEXT_IMAGE_SIZES` (in turn,
    so one batch mixes crop layouts): ``input_ids``, ``attention_mask``, ``pixel_values [I, P, 3, 32, 32]``
    (padded to the most crops), ``image_sizes [I, 2]``."""
    from .processors import random_prompts, tiny_next_processor

    processor = tiny_next_processor(model, padding_side=padding_side)
    texts, rows, _ = random_prompts(
        images_per_row, placeholder="<image>", sizes=TINY_NEXT_IMAGE_SIZES, text_lengths=text_lengths, seed=seed
    )
    images = [image for row in rows for image in row]
    out = processor(images=images or None, text=texts, return_tensors="pt", padding=True)
    inputs = {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
    if images:
        inputs["pixel_values"] = out["pixel_values"]
        inputs["image_sizes"] = out["image_sizes"]
    return inputs


qwen_inputs = _inputs_qwen  # public: also takes ``grids`` (real resolutions for the synthetic 7B shapes)

#: model_type -> input builder with :func:`tiny_inputs`' signature
INPUTS: dict[str, Any] = {
    "llava": _inputs_llava,
    "llava_next": _inputs_llava_next,
    "qwen2_vl": _inputs_qwen,
    "qwen2_5_vl": _inputs_qwen,
    "qwen3_vl": _inputs_qwen,
    "qwen3_vl_moe": _inputs_qwen,
    "llava_onevision": lambda model, rows, **kw: _family("llava_onevision").tiny_onevision_inputs(
        model, rows, **kw
    ),
    "gemma3": lambda model, rows, **kw: _family("gemma3").tiny_gemma3_inputs(model, rows, **kw),
    "internvl": lambda model, rows, **kw: _family("internvl").internvl_inputs(model, rows, **kw),
}


def tiny_inputs(
    model,
    images_per_row: list[int],
    *,
    text_lengths: list[int] | None = None,
    padding_side: str = "left",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Hand-built inputs of the exact shapes the model's processor produces, for a :func:`build_tiny` model:
    ``images_per_row[b]`` images in prompt ``b`` (0 = text only), padded with id 0 on ``padding_side``.
    Returns ``input_ids``, ``attention_mask`` and the model's image inputs."""
    model_type = model.config.model_type
    if model_type not in INPUTS:
        raise ValueError(f"no tiny inputs for model_type {model_type!r}; available: {', '.join(INPUTS)}")
    return INPUTS[model_type](
        model, images_per_row, text_lengths=text_lengths, padding_side=padding_side, seed=seed
    )
