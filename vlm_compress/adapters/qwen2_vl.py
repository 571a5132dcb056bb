"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``).

Each image has a dynamic resolution: ``image_grid_thw[i] = (t, h, w)`` patches, merged 2x2 by the projector, so
the prompt holds ``t * h * w / 4`` ``<|image_pad|>`` tokens, and *those* (after the merger) are the visual tokens
methods choose from, on a ``(h / 2, w / 2)`` grid.

Positions are 3-D (M-RoPE: temporal, height, width). The adapter computes them for the **full** input with the
model's own ``get_rope_index`` and gathers them onto the kept columns, so every kept token keeps the rotary
position it had; text after an image continues from the full grid's extent, exactly as unpatched. During
``generate`` the gathered ``[4, B, L]`` positions (text row + 3-D) are handed over and extended by generation
itself; manual decode loops get per-row offsets that include the rope deltas. Only ``position_ids="original"``
is supported (a contiguous renumbering of 3-D positions is not defined).

Signals: ``vision_features`` are the vision transformer's last hidden states of the 2x2 patches each merged
token is made of (concatenated, the merger's input); ``patch_features`` are the same patches unconcatenated,
``[N, 4, Dv]``. Qwen's encoder has **no [CLS] token**; ``cls_attention``
is a documented proxy: the head-averaged attention each merged token *receives* from all patches of its image
at the encoder's last block, recomputed from that block's own queries and keys (rows of the full attention of
that block averaged over queries, summed over the 4 patches), normalised to sum to 1
(:mod:`.qwen_signals`).

Room: adapters. May import ``views``, ``errors``, the engine's data types and the sibling helper modules.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..engine.sequence import ImageSlot, SequencePlan, gather_columns
from ..errors import InputMismatchError, UnsupportedModelError
from . import text_signals
from .base import Adapter
from .placeholders import assign_image_slots, placeholder_blocks
from .qwen_signals import QwenSignals


class Qwen2VLAdapter(Adapter):
    per_token_inputs: ClassVar[tuple[str, ...]] = ("token_type_ids", "mm_token_type_ids")
    #: positions are explicit after a rewrite; the grid would let transformers recompute them for the full length
    stale_after_rewrite: ClassVar[tuple[str, ...]] = ("image_grid_thw",)

    def __init__(self, model, undo, options):
        super().__init__(model, undo, options)
        if self.position_ids != "original":
            raise UnsupportedModelError(
                f"{type(model).__name__} uses 3-D M-RoPE positions; only position_ids='original' is supported"
            )
        self.inner = model.model
        self.visual = self.inner.visual
        self.image_token_id = self.config.image_token_id
        self.merge = self.config.vision_config.spatial_merge_size

    def available_signals(self) -> set[str]:
        return {"vision_features", "patch_features", "cls_attention"} | text_signals.available(self.tokenizer)

    def image_token_mask(self, input_ids, inputs_embeds):
        if input_ids is None:
            raise InputMismatchError(
                f"{type(self.model).__name__} needs input_ids with images (its 3-D positions are computed from them)"
            )
        return input_ids == self.image_token_id

    def grid_of(self, thw: torch.Tensor) -> tuple[int, int] | None:
        t, h, w = (int(x) for x in thw)
        return (h // self.merge, w // self.merge) if t == 1 else None

    # ------------------------------------------------------------------ encoding
    def encode(self, call: dict[str, Any], is_image: torch.Tensor) -> list[ImageSlot]:
        if call.get("pixel_values_videos") is not None:
            raise UnsupportedModelError("video inputs are not compressed; pass images only (pixel_values)")
        grid_thw = call.get("image_grid_thw")
        if grid_thw is None:
            raise InputMismatchError("pixel_values need image_grid_thw (the processor returns both)")
        if call.get("mm_token_type_ids") is None:
            call["mm_token_type_ids"] = is_image.int()
        pixel_values = call.pop("pixel_values")
        patches = [int(n) for n in grid_thw.prod(dim=-1)]
        if pixel_values.shape[0] != sum(patches):
            raise InputMismatchError(
                f"pixel_values hold {pixel_values.shape[0]} patches but image_grid_thw {grid_thw.tolist()} describes "
                f"{len(patches)} image(s) of {sum(patches)} patches ({'+'.join(map(str, patches))}); pass the "
                "processor's pixel_values and image_grid_thw together"
            )
        captured: dict[str, Any] = {}

        def capture(module, args, kwargs):
            captured["hidden"] = args[0] if args else kwargs["hidden_states"]
            captured["rotary"] = kwargs.get("position_embeddings")

        hook = self.visual.blocks[-1].attn.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            encoded = self.inner.get_image_features(pixel_values, grid_thw, return_dict=True)
        finally:
            hook.remove()
        features = list(encoded.pooler_output)
        self.check_finite(features)
        # every image's placeholders sit between <|vision_start|> and <|vision_end|>: one run per image
        placements = assign_image_slots(
            is_image,
            [f.shape[0] for f in features],
            placeholder="<|image_pad|>",
            prompt_images=placeholder_blocks(is_image),
        )
        signals = QwenSignals(self, call, encoded.last_hidden_state, captured, grid_thw)
        slots = []
        for i, ((row, columns), feats) in enumerate(zip(placements, features)):
            providers = signals.providers(i, row, columns, is_image)
            context = self.image_context(i, row, feats, providers, grid=self.grid_of(grid_thw[i]))
            slots.append(ImageSlot(row=row, columns=columns, context=context))
        return slots

    def pack_features(self, features, call):
        call["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}

    # ------------------------------------------------------------------ positions
    def _rope_index(self, call: dict[str, Any]) -> torch.Tensor:
        return self.inner.get_rope_index(
            call["input_ids"],
            mm_token_type_ids=call["mm_token_type_ids"],
            image_grid_thw=call["image_grid_thw"],
            attention_mask=call.get("attention_mask"),
        )[0]

    def default_positions(self, call: dict[str, Any], mode: str) -> torch.Tensor:
        """``[3, B, L]`` M-RoPE positions of the full input; in ``generate`` the text row is prepended
        (``[4, B, L]``), as ``Qwen2VLForConditionalGeneration._prepare_position_ids_for_generation`` does."""
        positions = self._rope_index(call)  # the call is still the caller's full input here
        if mode != "generate":
            return positions
        text = super().default_positions(call, mode)
        return torch.cat([text[None].to(positions.device), positions], dim=0)

    def rewrite_positions(self, positions: torch.Tensor, plan: SequencePlan) -> torch.Tensor:
        if positions.ndim == 2:
            return super().rewrite_positions(positions, plan)
        columns = plan.columns
        planes = [p.expand(columns.shape[0], -1) if p.shape[0] == 1 else p for p in positions]
        return torch.stack([gather_columns(p, columns, 0) for p in planes])

    def decode_offset(self, call: dict[str, Any], plan: SequencePlan, positions: torch.Tensor) -> torch.Tensor:
        """Per row, what to add to a cache index to get the next token's position: the largest kept position
        + 1 continues the full sequence's numbering (which includes the rope deltas)."""
        planes = positions if positions.ndim == 3 else positions[None]
        valid = plan.attention_mask.bool()
        last = planes.masked_fill(~valid[None], -1).amax(dim=(0, 2))
        return (last + 1 - plan.columns.shape[1])[:, None]
