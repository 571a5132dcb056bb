"""Signals read from a HuggingFace vision encoder (CLIP-style towers of LLaVA and LLaVA-NeXT).

Nothing here changes the encoder: it reads a layer's own weights to recompute the one attention row a method
needs, so the encoder keeps running with SDPA/FlashAttention and no attention matrix is materialised.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MissingSignalError


def encoder_layers(vision_tower: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a CLIP/SigLIP-style tower (``vision_model.encoder.layers``)."""
    body = getattr(vision_tower, "vision_model", vision_tower)
    layers = getattr(getattr(body, "encoder", None), "layers", None)
    if layers is None:
        raise MissingSignalError(
            f"cannot find the encoder blocks of {type(vision_tower).__name__} (expected vision_model.encoder.layers)"
        )
    return layers


def has_cls_token(vision_tower: nn.Module) -> bool:
    body = getattr(vision_tower, "vision_model", vision_tower)
    return getattr(getattr(body, "embeddings", None), "class_embedding", None) is not None


def feature_layer_index(num_hidden_states: int, feature_layer: int) -> int:
    """Index (into ``hidden_states``) of the feature layer; ``hidden_states[0]`` is the encoder's input."""
    index = feature_layer % num_hidden_states
    if index == 0:
        raise MissingSignalError("the feature layer is the embedding output; it has no attention")
    return index


@torch.no_grad()
def cls_attention(
    vision_tower: nn.Module, hidden_states: tuple[torch.Tensor, ...], feature_layer: int
) -> torch.Tensor:
    """Head-averaged attention of the [CLS] query over all tokens at the block that outputs the feature layer.

    ``hidden_states``: the encoder's per-layer outputs (``[I, T, C]`` each, ``T = 1 + patches``); the block
    that produces ``hidden_states[j]`` reads ``hidden_states[j - 1]``. Returns ``[I, T]`` in fp32 (the [CLS]
    column included; rows sum to 1).
    """
    if not has_cls_token(vision_tower):
        raise MissingSignalError(
            f"{type(vision_tower).__name__} has no [CLS] token, so there is no [CLS] attention; "
            "choose a method that does not need it"
        )
    index = feature_layer_index(len(hidden_states), feature_layer)
    block = encoder_layers(vision_tower)[index - 1]
    attn = block.self_attn
    x = block.layer_norm1(hidden_states[index - 1])
    num_heads, head_dim = attn.num_heads, attn.head_dim
    query = attn.q_proj(x[:, :1]).view(x.shape[0], 1, num_heads, head_dim).transpose(1, 2)
    keys = attn.k_proj(x).view(x.shape[0], x.shape[1], num_heads, head_dim).transpose(1, 2)
    logits = (query.float() @ keys.float().transpose(-1, -2)) * attn.scale  # [I, heads, 1, T]
    return logits.softmax(dim=-1).mean(dim=1)[:, 0]
