"""Signals read from a HuggingFace vision encoder (CLIP-style towers of LLaVA and LLaVA-NeXT).

Nothing here changes the encoder: it reads a layer's own weights to recompute the one attention row a method
needs, so the encoder keeps running with SDPA/FlashAttention and no attention matrix is materialised.
:class:`ImageSignals` serves them, with the prompt's text signals, as one call's lazy signals.

Room: adapters. May import ``errors``, ``engine.signals`` and :mod:`.text_signals`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..engine.signals import extension_providers
from ..errors import MissingSignalError
from .text_signals import PromptSignals


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


def _cls_logits(vision_tower: nn.Module, hidden_states: tuple[torch.Tensor, ...], index: int) -> torch.Tensor:
    """``[I, heads, T]`` scaled logits ``q . k / sqrt(d)`` of the [CLS] query at the block producing
    ``hidden_states[index]``, recomputed from the block's own projections of its input ``hidden_states[index - 1]``."""
    if not has_cls_token(vision_tower):
        raise MissingSignalError(
            f"{type(vision_tower).__name__} has no [CLS] token, so there is no [CLS] attention; "
            "choose a method that does not need it"
        )
    block = encoder_layers(vision_tower)[index - 1]
    attn = block.self_attn
    x = block.layer_norm1(hidden_states[index - 1])
    num_heads, head_dim = attn.num_heads, attn.head_dim
    query = attn.q_proj(x[:, :1]).view(x.shape[0], 1, num_heads, head_dim).transpose(1, 2)
    keys = attn.k_proj(x).view(x.shape[0], x.shape[1], num_heads, head_dim).transpose(1, 2)
    return ((query.float() @ keys.float().transpose(-1, -2)) * attn.scale)[:, :, 0]


@torch.no_grad()
def cls_attention(
    vision_tower: nn.Module, hidden_states: tuple[torch.Tensor, ...], feature_layer: int
) -> torch.Tensor:
    """Head-averaged attention of the [CLS] query over all tokens at the block that outputs the feature layer.

    ``hidden_states``: the encoder's per-layer outputs (``[I, T, C]`` each, ``T = 1 + patches``); the block
    that produces ``hidden_states[j]`` reads ``hidden_states[j - 1]``. Returns ``[I, T]`` in fp32 (the [CLS]
    column included; rows sum to 1).
    """
    index = feature_layer_index(len(hidden_states), feature_layer)
    return _cls_logits(vision_tower, hidden_states, index).softmax(dim=-1).mean(dim=1)


@torch.no_grad()
def feature_keys(vision_tower: nn.Module, hidden_states: tuple[torch.Tensor, ...], feature_layer: int) -> torch.Tensor:
    """``[I, T, head_dim]`` the key states of the block that outputs the feature layer, averaged over heads
    (VisionZip's similarity space: its ``raw_key_states.mean(1)``), recomputed from the block's own
    ``layer_norm1`` and ``k_proj`` on its input ``hidden_states[index - 1]``."""
    index = feature_layer_index(len(hidden_states), feature_layer)
    block = encoder_layers(vision_tower)[index - 1]
    attn = block.self_attn
    x = block.layer_norm1(hidden_states[index - 1])
    keys = attn.k_proj(x).view(x.shape[0], x.shape[1], attn.num_heads, attn.head_dim)
    return keys.mean(dim=2)


@torch.no_grad()
def cls_attention_logits(vision_tower: nn.Module, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Head-averaged *pre-softmax* scaled logits ``q . k / sqrt(d)`` of the [CLS] query at the tower's **last** block.

    GlobalCom²'s score (its ``attn_maps[-1][:, 0]``). ``hidden_states`` must hold every block's output, as a
    tower run with ``output_hidden_states=True`` gives (``len(layers) + 1`` entries), whatever the feature layer.
    Returns ``[I, T]`` in fp32 (the [CLS] column included; unnormalised, may be negative).
    """
    num_layers = len(encoder_layers(vision_tower))
    if len(hidden_states) != num_layers + 1:
        raise MissingSignalError(
            f"the encoder pass gave {len(hidden_states)} hidden states, not {num_layers + 1}: the input of its last "
            "block is missing, so its [CLS] attention logits cannot be recomputed"
        )
    return _cls_logits(vision_tower, hidden_states, num_layers).mean(dim=1)


class ImageSignals(PromptSignals):
    """Lazy signals of the images of one call; batched across images and computed at most once."""

    def __init__(self, adapter: Any, call: dict[str, Any], hidden_states, feature_layer, strategy: str):
        super().__init__(adapter, call)
        self.hidden_states = hidden_states
        self.feature_layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
        self.drop_cls = strategy == "default"
        self._cls: torch.Tensor | None = None
        self._cls_logits: torch.Tensor | None = None
        self._keys: torch.Tensor | None = None
        self._cls_tokens: torch.Tensor | None = None
        # read right after the encoder pass, before a later pass overwrites what the sources look at
        self._extensions = extension_providers(self)

    # -- the call's encoder pass, as signal sources see it (engine.signals.EncoderPass)
    @property
    def vision_tower(self) -> nn.Module:
        return self.adapter.vision_tower

    @property
    def num_passes(self) -> int:
        return int(self.hidden_states[0].shape[0])

    @property
    def num_patches(self) -> int:
        return int(self.hidden_states[0].shape[1]) - self._start()

    def per_image(self, image: int, per_pass: torch.Tensor) -> torch.Tensor:
        """Per-encoder-pass values ``[passes, patches, ...]`` -> the image's tokens (one pass per image here)."""
        return per_pass[image]

    def providers(self, image: int, row: int, columns: torch.Tensor, is_image: torch.Tensor) -> dict[str, Any]:
        providers = {
            "vision_features": lambda: self.vision_features(image),
            "cls_attention": lambda: self.per_image(image, self.cls_attention()),
            "cls_attention_logits": lambda: self.per_image(image, self.cls_attention_logits()),
            "vision_keys": lambda: self.per_image(image, self.vision_keys()),
            **self.text_providers(row, columns, is_image),
        }
        if self.drop_cls and has_cls_token(self.vision_tower):
            providers["cls_tokens"] = lambda: self.cls_tokens()[self.image_passes(image)]
        for name, provider in self._extensions.items():
            providers[name] = lambda provider=provider: provider(image)
        return providers

    def image_passes(self, image: int) -> torch.Tensor:
        """``[P]`` the encoder passes of image ``image``, in the order its tokens come from them (one here)."""
        return torch.tensor([image])

    def _start(self) -> int:
        return 1 if self.drop_cls else 0

    def vision_features(self, image: int) -> torch.Tensor:
        layers = [self.hidden_states[layer][image, self._start() :] for layer in self.feature_layers]
        return torch.cat(layers, dim=-1)

    def vision_keys(self) -> torch.Tensor:
        """``[passes, patches, head_dim]`` head-mean keys of the feature-layer block ([CLS] dropped as the features)."""
        if self._keys is None:
            tower = self.adapter.vision_tower
            self._keys = feature_keys(tower, self.hidden_states, self.feature_layers[-1])[:, self._start() :]
        return self._keys

    @torch.no_grad()
    def cls_tokens(self) -> torch.Tensor:
        """``[passes, D]`` every pass's [CLS] token at the feature layer(s) through the model's own multi-modal
        projector: the token VisionZip keeps beside the patches (its official code projects
        ``hidden_states[-2][:, 0]`` with them). Several feature layers are concatenated, as the model does."""
        if self._cls_tokens is None:
            states = torch.cat([self.hidden_states[layer][:, :1] for layer in self.feature_layers], dim=-1)
            self._cls_tokens = self.adapter.inner.multi_modal_projector(states)[:, 0]
        return self._cls_tokens

    def cls_attention(self) -> torch.Tensor:
        if self._cls is None:
            tower = self.adapter.vision_tower
            self._cls = cls_attention(tower, self.hidden_states, self.feature_layers[-1])[
                :, self._start() :
            ]
        return self._cls

    def cls_attention_logits(self) -> torch.Tensor:
        """``[passes, patches]`` head-mean [CLS] logits at the tower's last block, from this call's hidden states."""
        if self._cls_logits is None:
            tower = self.adapter.vision_tower
            self._cls_logits = cls_attention_logits(tower, self.hidden_states)[
                :, self._start() :
            ]
        return self._cls_logits
