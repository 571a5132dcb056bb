"""Gemma 3 (``Gemma3ForConditionalGeneration``, model_type ``gemma3``).

Every image is one SigLIP pass of ``p x p`` patches (64 x 64 at 896 px) that the projector average-pools
``k x k`` into ``t x t`` tokens (16 x 16 = 256); the prompt holds ``<start_of_image>``, ``t * t``
``<image_soft_token>`` placeholders and ``<end_of_image>`` per image (Pan & Scan crops, which the processor
adds as further images, would each be a slot of their own; not tested). Those pooled tokens are what methods choose from, on a ``(t, t)`` grid.

Inside the language model the soft tokens of one image attend to each other **bidirectionally**; the model
builds that mask itself from ``token_type_ids`` (1 at soft tokens). The engine gathers ``token_type_ids`` with
the kept columns, and an image's kept tokens stay one contiguous run between its delimiters, so the model's own
mask on the shortened sequence is bidirectional exactly among each image's kept tokens. A call without
``token_type_ids`` gets the causal mask, as unpatched.

Signals: ``vision_features`` are the pooled last hidden states the projector reads (before its soft-embedding
norm); ``patch_features`` ``[N, k*k, Dv]`` the patches each token pools. SigLIP has no [CLS]: ``cls_attention``
is the proxy of :mod:`.siglip` (the head- and query-averaged attention each patch receives at the last block),
summed over each token's ``k x k`` patches (it sums to 1 per image); ``cls_attention_logits`` the
query-averaged pre-softmax logits at the last block, averaged over each token's patches.

Room: adapters. May import ``context``, ``errors``, the engine's data types and the sibling helper modules.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..engine.sequence import ImageSlot
from . import siglip, text_signals
from .base import Adapter
from .placeholders import assign_image_slots, placeholder_blocks


class Gemma3Adapter(Adapter):
    def __init__(self, model, undo, options):
        super().__init__(model, undo, options)
        self.inner = model.model
        self.vision_tower = self.inner.vision_tower
        projector = self.inner.multi_modal_projector
        self.side = projector.tokens_per_side  # t
        self.kernel = projector.kernel_size  # k
        self.image_token_id = self.config.image_token_id

    def available_signals(self) -> set[str]:
        signals = {"vision_features", "patch_features", "cls_attention", "cls_attention_logits"}
        return signals | text_signals.available(self.tokenizer)

    def encode(self, call: dict[str, Any], is_image: torch.Tensor) -> list[ImageSlot]:
        pixel_values = call.pop("pixel_values")
        encoded = self.inner.get_image_features(pixel_values, output_hidden_states=True, return_dict=True)
        features = list(encoded.pooler_output)
        self.check_finite(features)
        placements = assign_image_slots(
            is_image,
            [f.shape[0] for f in features],
            placeholder="<image_soft_token>",
            prompt_images=placeholder_blocks(is_image),
        )
        signals = Gemma3Signals(self, call, encoded)
        slots = []
        for i, ((row, columns), feats) in enumerate(zip(placements, features)):
            providers = signals.providers(i, row, columns, is_image)
            context = self.image_context(i, row, feats, providers, grid=(self.side, self.side))
            slots.append(ImageSlot(row=row, columns=columns, context=context))
        return slots

    def pack_features(self, features, call):
        # Gemma 3 scatters one [images, tokens, D] tensor; kept counts may differ per image, so one flat row
        call["mm_encoder_outputs"] = {
            "image": BaseModelOutputWithPooling(pooler_output=torch.cat(features)[None])
        }


class Gemma3Signals(text_signals.PromptSignals):
    """Lazy signals of the images of one Gemma 3 call: per-patch values pooled onto the ``t x t`` tokens."""

    def __init__(self, adapter: Gemma3Adapter, call: dict[str, Any], encoded: Any):
        super().__init__(adapter, call)
        self.vision_tower = adapter.vision_tower
        self.side, self.kernel = adapter.side, adapter.kernel
        self.last_hidden = encoded.last_hidden_state  # [I, p*p, Dv], post-layernorm: the projector's input
        self.hidden_states = encoded.hidden_states
        self._attention: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None

    def providers(
        self, image: int, row: int, columns: torch.Tensor, is_image: torch.Tensor
    ) -> dict[str, Any]:
        return {
            "vision_features": lambda: self.patch_features(image).mean(dim=1),
            "patch_features": lambda: self.patch_features(image),
            "cls_attention": lambda: self.attention()[image],
            "cls_attention_logits": lambda: self.logits()[image],
            **self.text_providers(row, columns, is_image),
        }

    def pooled(self, per_patch: torch.Tensor) -> torch.Tensor:
        """``[I, p*p, ...]`` in raster order -> ``[I, t*t, k*k, ...]``: the patches each token pools."""
        t, k = self.side, self.kernel
        rest = per_patch.shape[2:]
        grid = per_patch.reshape(per_patch.shape[0], t, k, t, k, *rest)
        return grid.transpose(2, 3).reshape(per_patch.shape[0], t * t, k * k, *rest)

    def patch_features(self, image: int) -> torch.Tensor:
        return self.pooled(self.last_hidden[image : image + 1])[0]

    def attention(self) -> torch.Tensor:
        if self._attention is None:
            received = siglip.attention_received(self.vision_tower, self.hidden_states, -1)
            self._attention = self.pooled(received).sum(dim=-1)
        return self._attention

    def logits(self) -> torch.Tensor:
        if self._logits is None:
            self._logits = self.pooled(siglip.mean_query_logits(self.vision_tower, self.hidden_states)).mean(
                -1
            )
        return self._logits
