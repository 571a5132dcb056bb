"""Attention signals of vision towers without a [CLS] token (SigLIP: LLaVA-OneVision, Gemma 3, PaliGemma).

A SigLIP tower runs its patches through the same blocks as CLIP (``layer_norm1``, ``self_attn.q_proj`` /
``k_proj``) but has no [CLS] query, so "the [CLS] attention" does not exist. The documented proxies, both
averaged over the heads and recomputed from the block's own projections of its input (the tower keeps running
with SDPA/FlashAttention):

- ``cls_attention``: the attention each patch **receives** at the block that outputs the feature layer, averaged
  over all queries of its pass (rows of that block's attention averaged); it sums to 1 over a pass's patches,
  like the [CLS] row it stands for;
- ``cls_attention_logits``: the pre-softmax logits ``q . k / sqrt(d)`` at the tower's **last** block averaged over
  all queries (the logits of the mean query), GlobalCom²'s score.

Room: adapters. May import ``errors`` and :mod:`.vision_towers`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MissingSignalError
from .vision_towers import encoder_layers, feature_layer_index


def _queries_keys(block: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``[I, heads, T, d]`` fp32 queries and keys of ``block`` on its input ``hidden [I, T, C]``, and its scale."""
    attn = block.self_attn
    x = block.layer_norm1(hidden)
    shape = (x.shape[0], x.shape[1], attn.num_heads, attn.head_dim)
    query = attn.q_proj(x).view(shape).transpose(1, 2).float()
    keys = attn.k_proj(x).view(shape).transpose(1, 2).float()
    return query, keys, attn.scale


@torch.no_grad()
def attention_received(
    vision_tower: nn.Module, hidden_states: tuple[torch.Tensor, ...], feature_layer: int
) -> torch.Tensor:
    """``[I, T]`` fp32: the head- and query-averaged attention every patch receives at the block that outputs
    ``hidden_states[feature_layer]`` (rows sum to 1). One head at a time: ``I * T * T`` scores at most."""
    index = feature_layer_index(len(hidden_states), feature_layer)
    query, keys, scale = _queries_keys(encoder_layers(vision_tower)[index - 1], hidden_states[index - 1])
    received = torch.zeros(query.shape[0], query.shape[2], dtype=torch.float32, device=query.device)
    for head in range(query.shape[1]):
        scores = (query[:, head] @ keys[:, head].transpose(-1, -2)) * scale
        received += scores.softmax(dim=-1).mean(dim=1)
    return received / query.shape[1]


@torch.no_grad()
def mean_query_logits(vision_tower: nn.Module, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``[I, T]`` fp32: head-mean of the query-averaged pre-softmax logits at the tower's **last** block
    (``hidden_states`` must hold every block's output: ``len(layers) + 1`` entries)."""
    layers = encoder_layers(vision_tower)
    if len(hidden_states) != len(layers) + 1:
        raise MissingSignalError(
            f"the encoder pass gave {len(hidden_states)} hidden states, not {len(layers) + 1}: the input of its last "
            "block is missing, so its attention logits cannot be recomputed"
        )
    query, keys, scale = _queries_keys(layers[-1], hidden_states[-2])
    mean_query = query.mean(dim=2, keepdim=True)  # [I, heads, 1, d]: mean of q.k over queries = mean q . k
    return ((mean_query @ keys.transpose(-1, -2)) * scale)[:, :, 0].mean(dim=1)
