"""Tiny random-weight Qwen3-VL / Qwen3-VL-MoE models and the family's real processor, offline.

Vision: 3 blocks of 32, 4-px patches, 2x2 merger, DeepStack mergers after every block (3 injections, into the
outputs of decoder layers 0, 1 and 2: every layer of the 3-layer language model, so in-LLM pruning at any layer
meets an injection after it); text: 3-layer Qwen3-VL (head_dim 16, interleaved M-RoPE 2+3+3), MoE with 4 experts
(top 2) for ``qwen3_vl_moe``. Inputs are :func:`.tiny.qwen_inputs` (same tokens and patch layout as Qwen2-VL).
May import torch, transformers and the sibling modules.
"""

from __future__ import annotations

from typing import Any

from .tiny import TINY_IMAGE_TOKEN_ID, TINY_QWEN_TOKENS, _tiny_text_params

#: the DeepStack vision blocks of the tiny models (one injection per decoder layer of the tiny language model)
TINY_DEEPSTACK_LAYERS = [0, 1, 2]


def build_qwen3_vl(model_type: str, attn_implementation: str, **overrides: Any):
    """A tiny ``Qwen3VLForConditionalGeneration`` (``model_type="qwen3_vl"``) or
    ``Qwen3VLMoeForConditionalGeneration`` (``"qwen3_vl_moe"``)."""
    from transformers import (
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
    )

    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    }
    text = _tiny_text_params(rope_parameters=rope, head_dim=16, **overrides)
    for name in ("bos_token_id", "eos_token_id"):
        text.pop(name)
    vision = dict(
        depth=3,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
        out_hidden_size=text["hidden_size"],
        num_position_embeddings=64,
        deepstack_visual_indexes=TINY_DEEPSTACK_LAYERS,
    )
    if model_type == "qwen3_vl_moe":
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
        config_cls, model_cls = Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration
    else:
        config_cls, model_cls = Qwen3VLConfig, Qwen3VLForConditionalGeneration
    config = config_cls(
        vision_config=vision, text_config=text, image_token_id=TINY_IMAGE_TOKEN_ID, **TINY_QWEN_TOKENS
    )
    config._attn_implementation = attn_implementation
    return model_cls(config)


def tiny_qwen3_processor(model, words: list[str] | None = None, **resize: int):
    """A real ``Qwen3VLProcessor`` for the tiny Qwen3-VL models (the Qwen2-VL PIL image processor Qwen3-VL
    checkpoints use, with the tiny tower's 4-px patches; the word-level tokenizer and chat layout of
    :func:`.processors.tiny_qwen_processor`). ``resize``: ``min_pixels`` / ``max_pixels`` as there."""
    from transformers import ProcessorMixin, Qwen3VLProcessor

    from .processors import tiny_qwen_processor

    class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
        """Without its video processor (it needs torchvision, which the core environment cannot have)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            for kind in ("image", "video", "vision_start", "vision_end"):
                token = {"image": "<|image_pad|>", "video": "<|video_pad|>"}.get(kind, f"<|{kind}|>")
                setattr(self, f"{kind}_token", token)
                setattr(self, f"{kind}_token_id", tokenizer.convert_tokens_to_ids(token))
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    qwen2 = tiny_qwen_processor(model, words, **resize)
    return ImageOnlyQwen3VLProcessor(
        qwen2.image_processor, qwen2.tokenizer, chat_template=qwen2.chat_template
    )
