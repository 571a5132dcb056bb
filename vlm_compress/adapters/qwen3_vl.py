"""Qwen3-VL and Qwen3-VL-MoE (``Qwen3VLForConditionalGeneration``, ``Qwen3VLMoeForConditionalGeneration``).

The image side is Qwen2-VL's (:class:`~.qwen2_vl.Qwen2VLAdapter`): dynamic resolution, ``image_grid_thw[i] =
(t, h, w)`` patches merged 2x2, so ``t * h * w / 4`` ``<|image_pad|>`` tokens per image on an ``(h / 2, w / 2)``
grid; 3-D M-RoPE positions computed for the full input with the model's own ``get_rope_index`` (Qwen3-VL's
layout: an image advances the text position by ``max(h, w) / 2``) and gathered onto the kept columns; only
``position_ids="original"``. The signals are the same: ``vision_features`` are the patch merger's input (the last
vision block's hidden states of the 2x2 patches of each merged token, concatenated), ``patch_features`` the same
unconcatenated, and ``cls_attention`` the documented proxy of the Qwen2-VL adapter (Qwen3-VL's encoder has no
[CLS] either): the head-averaged attention each merged token receives from all patches of its image at the last
vision block, normalised to sum to 1.

DeepStack: Qwen3-VL adds the outputs of extra patch mergers of intermediate vision blocks to the hidden states of
the visual positions after its first decoder layers. The adapter gathers those features with the same selection
as the visual tokens (merging methods: averaged over the same groups), so every injection point sees exactly the
kept tokens; when in-LLM pruning shortens the sequence before a later injection, that injection follows the
pruned columns (:attr:`~vlm_compress.engine.state.CallState.layer_columns`).

Room: adapters. May import ``context``, ``errors``, the engine's data types and the sibling helper modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from ..engine.sequence import ImageSlot, gather_marked_rows
from .qwen2_vl import Qwen2VLAdapter

if TYPE_CHECKING:
    from ..engine.state import CallStates


def _group_mean(values: torch.Tensor, groups: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of ``values [N, D]`` over each group (``groups [N]``: row in ``0..k-1``, ``-1``: dropped), in fp32,
    as merging methods average the projected features -> ``[k, D]``."""
    member = groups >= 0
    sums = torch.zeros(k, values.shape[1], dtype=torch.float32, device=values.device)
    sums.index_add_(0, groups[member].to(values.device), values[member].float())
    counts = torch.bincount(groups[member], minlength=k).clamp_min(1).unsqueeze(1).to(values.device)
    return (sums / counts).to(values.dtype)


class Qwen3VLAdapter(Qwen2VLAdapter):
    def __init__(self, model, undo, options):
        super().__init__(model, undo, options)
        self.states: CallStates | None = None
        self._deepstack: list[list[torch.Tensor]] = []  # per image, per injection: [N_i, D]
        self._kept_deepstack: list[list[torch.Tensor]] = []  # per image, per injection: [K_i, D]
        language_model = self.language_model
        undo.set_attr(
            language_model, "_deepstack_process", self._following_pruning(language_model._deepstack_process)
        )

    def follow_calls(self, states: CallStates) -> None:
        """The engine's call states: an injection after in-LLM pruning reads the pruned columns there."""
        self.states = states

    def _following_pruning(self, deepstack_process):
        def process(hidden_states, visual_pos_masks, visual_embeds):
            call = self.states.current if self.states is not None else None
            columns = call.layer_columns if call is not None else None
            if columns is not None and visual_pos_masks.shape[1] != hidden_states.shape[1]:
                visual_pos_masks, visual_embeds = gather_marked_rows(visual_pos_masks, visual_embeds, columns)
            return deepstack_process(hidden_states, visual_pos_masks, visual_embeds)

        return process

    # ------------------------------------------------------------------ encoding
    def encode(self, call: dict[str, Any], is_image: torch.Tensor) -> list[ImageSlot]:
        captured: dict[str, list[torch.Tensor]] = {}

        def capture(module, args, output):
            captured["deepstack"] = list(output.deepstack_features)

        hook = self.visual.register_forward_hook(capture)
        try:
            slots = super().encode(call, is_image)
        finally:
            hook.remove()
        sizes = [slot.context.num_tokens for slot in slots]
        per_layer = [features.split(sizes) for features in captured["deepstack"]]
        self._deepstack = [list(layers) for layers in zip(*per_layer)] if per_layer else [[] for _ in slots]
        self._kept_deepstack = []
        return slots

    # ------------------------------------------------------------------ packing kept features back
    def kept_layout(self, slot: ImageSlot) -> tuple[torch.Tensor, torch.Tensor]:
        columns, features = super().kept_layout(slot)
        selection = slot.selection
        layers = self._deepstack[slot.context.image_index]
        if selection.features is not None and selection.groups is not None:
            kept = [_group_mean(f, selection.groups, selection.num_kept) for f in layers]
        else:
            kept = [f[selection.kept_indices.to(f.device)] for f in layers]
        self._kept_deepstack.append(kept)
        return columns, features

    def pack_features(self, features, call):
        deepstack = [list(layer) for layer in zip(*self._kept_deepstack)]
        call["mm_encoder_outputs"] = {
            "image": BaseModelOutputWithDeepstackFeatures(
                pooler_output=features, deepstack_features=deepstack
            )
        }
