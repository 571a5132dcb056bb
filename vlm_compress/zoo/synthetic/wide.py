"""Random-weight models with the real widths of 7B-class checkpoints (LLaVA-1.5-7B, LLaVA-NeXT-7B, Qwen2-VL-7B,
Qwen3-VL-8B) and only a few decoder layers, for timings that look like the real ones (``vlmc bench --synthetic``).

Built on the meta device and materialised in the target dtype/device. May import torch, transformers and
:mod:`.tiny` (token ids, text config, input builders).
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny import (
    TINY_IMAGE_TOKEN_ID,
    TINY_QWEN_TOKENS,
    _family,
    _tiny_text_params,
    qwen_inputs,
    tiny_inputs,
)


def _llama_text_config(**overrides: Any):
    """Vicuna-7B's widths (LLaVA-1.5's language model); the special token ids of the tiny models."""
    from transformers import LlamaConfig

    sizes = dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    return LlamaConfig(**_tiny_text_params(**{**sizes, **overrides}))


def _clip_vit_l_336(num_layers: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=num_layers,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )


def _llava_15_7b(layers: int, vision_layers: int):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=_clip_vit_l_336(vision_layers),
        text_config=_llama_text_config(num_hidden_layers=layers),
        image_token_id=32000,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    return LlavaForConditionalGeneration(config)


def _llava_next_7b(layers: int, vision_layers: int):
    """LLaVA-NeXT (Vicuna-7B): CLIP-L/336 with AnyRes pinpoints up to 672x672 (2,880 visual tokens)."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig(
        vision_config=_clip_vit_l_336(vision_layers),
        text_config=_llama_text_config(num_hidden_layers=layers),
        image_token_id=TINY_IMAGE_TOKEN_ID,  # the id the tiny processors use for <image>
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return LlavaNextForConditionalGeneration(config)


def _qwen2_vl_7b(layers: int, vision_layers: int):
    """Qwen2-VL-7B: 32-block ViT (1280 wide, 14-px patches, 2x2 merger), Qwen2-7B text with M-RoPE."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        vision_config=dict(
            depth=vision_layers,
            embed_dim=1280,
            hidden_size=3584,
            num_heads=16,
            mlp_ratio=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
        text_config=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=layers,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=32768,
            pad_token_id=0,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        ),
        image_token_id=TINY_IMAGE_TOKEN_ID,
        **TINY_QWEN_TOKENS,
    )
    return Qwen2VLForConditionalGeneration(config)


def _qwen3_vl_8b(layers: int, vision_layers: int):
    """Qwen3-VL-8B: 27-block ViT (1152 wide, 16-px patches, 2x2 merger, DeepStack mergers after blocks 8, 16 and 24,
    scaled to ``vision_layers``), Qwen3-8B text (QK-norm, GQA 32/8) with interleaved M-RoPE."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    deepstack = sorted({(block * vision_layers) // 27 for block in (8, 16, 24)})
    config = Qwen3VLConfig(
        vision_config=dict(
            depth=vision_layers,
            hidden_size=1152,
            intermediate_size=4304,
            num_heads=16,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
            out_hidden_size=4096,
            num_position_embeddings=2304,
            deepstack_visual_indexes=deepstack,
        ),
        text_config=dict(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=layers,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            max_position_embeddings=262144,
            pad_token_id=0,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        ),
        image_token_id=TINY_IMAGE_TOKEN_ID,
        **TINY_QWEN_TOKENS,
    )
    return Qwen3VLForConditionalGeneration(config)


SYNTHETIC = {
    "llava-1.5-7b": _llava_15_7b,
    "llava-next-7b": _llava_next_7b,
    "qwen2-vl-7b": _qwen2_vl_7b,
    "qwen3-vl-8b": _qwen3_vl_8b,
    "llava-onevision-7b": lambda *sizes: _family("llava_onevision").llava_onevision_7b(*sizes),
    "gemma3-4b": lambda *sizes: _family("gemma3").gemma3_4b(*sizes),
    "internvl3-8b": lambda *sizes: _family("internvl").internvl3_8b(*sizes),
}
#: the synthetic InternVL image: 896x896 px -> 2x2 crops of 448 px + the thumbnail -> 5 x 256 = 1,280 tokens
INTERNVL_SYNTHETIC_SIZE = (896, 896)
#: patch grid of the synthetic Qwen images: 32x32 patches -> 256 visual tokens (448x448 px for Qwen2-VL's 14-px
#: patches, 512x512 px for Qwen3-VL's 16-px ones)
QWEN_SYNTHETIC_GRID = (1, 32, 32)


def synthetic_inputs(model, text_tokens: int = 40) -> dict[str, torch.Tensor]:
    """One prompt with one image of a realistic size for a :func:`build_synthetic` model (576 tokens for LLaVA-1.5,
    a 672x672-class AnyRes image for LLaVA-NeXT, 256 merged tokens for Qwen2-VL and Qwen3-VL, 2x2 tiles +
    thumbnail for InternVL)."""
    if model.config.model_type in ("qwen2_vl", "qwen3_vl"):
        return qwen_inputs(model, [1], text_lengths=[text_tokens], grids=(QWEN_SYNTHETIC_GRID,))
    if model.config.model_type == "gemma3":
        return _family("gemma3").tiny_gemma3_inputs(model, [1], text_lengths=[text_tokens])
    if model.config.model_type == "llava_onevision":
        family = _family("llava_onevision")
        return family.tiny_onevision_inputs(
            model, [1], text_lengths=[text_tokens], image_sizes=[family.SYNTHETIC_ONEVISION_IMAGE]
        )
    if model.config.model_type == "internvl":
        return _family("internvl").internvl_inputs(
            model, [1], text_lengths=[text_tokens], sizes=[INTERNVL_SYNTHETIC_SIZE]
        )
    # seed 3 picks the square image of TINY_NEXT_IMAGE_SIZES: the 672x672 pinpoint, 2x2 crops (2,880 tokens)
    seed = 3 if model.config.model_type == "llava_next" else 0
    return tiny_inputs(model, [1], text_lengths=[text_tokens], seed=seed)


def build_synthetic(
    name: str,
    *,
    layers: int = 2,
    vision_layers: int = 24,
    dtype: torch.dtype = torch.float32,
    device: Any = "cpu",
    seed: int = 0,
):
    """A random-weight model with the real widths of ``name`` but ``layers`` decoder layers.

    ``vision_layers`` (default: the real 24) can be lowered too: the vision tower runs once per image whatever
    the method, so it changes end-to-end figures but not the language-model prefill ratio.
    """
    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic shape {name!r}; available: {', '.join(SYNTHETIC)}")
    if layers < 1 or vision_layers < 2:
        raise ValueError(f"need layers >= 1 and vision_layers >= 2, got {layers} and {vision_layers}")
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = SYNTHETIC[name](layers, vision_layers)
    # materialise directly in the target dtype/device: a 7B-wide model is GBs in fp32
    model = model.to_empty(device=device).to(dtype)
    _init_random(model)
    model.generation_config.pad_token_id = 0
    return model.eval()


@torch.no_grad()
def _init_random(model: torch.nn.Module) -> None:
    """Small random weights (std 0.02), unit norms, zero biases: stable activations through the layers."""
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        elif param.ndim == 1:
            param.fill_(1.0)
        else:
            param.normal_(0.0, 0.02)
    for name, buffer in model.named_buffers():
        if "inv_freq" in name:
            dim = buffer.numel() * 2
            base = 10000.0
            buffer.copy_(1.0 / (base ** (torch.arange(0, dim, 2, device=buffer.device).float() / dim)))
        elif "position_ids" in name:
            buffer.copy_(torch.arange(buffer.shape[-1], device=buffer.device).expand_as(buffer))
