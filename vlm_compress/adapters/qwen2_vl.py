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
that block averaged over queries, summed over the 4 patches), normalised to sum to 1.

Room: adapters. May import ``context``, ``errors``, the engine's data types and the sibling helper modules.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..engine.sequence import ImageSlot, SequencePlan, gather_columns
from ..errors import InputMismatchError, UnsupportedModelError
from ..views import Signals, VisualContext
from . import text_signals
from .base import Adapter
from .placeholders import assign_image_slots, placeholder_blocks


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
            context = VisualContext(
                features=feats,
                grid=self.grid_of(grid_thw[i]),
                image_index=i,
                row=row,
                model_type=self.config.model_type,
                signals=Signals(signals.providers(i, row, columns, is_image), owner=f"image {i}"),
            )
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


#: the most attention scores (query rows x patches) the ``cls_attention`` proxy holds at once (64 MiB in fp32);
#: an image with more patches than this is processed in blocks of query rows
ATTENTION_CHUNK = 1 << 24


class QwenSignals(text_signals.PromptSignals):
    """Lazy signals of the images of one Qwen2-VL call."""

    def __init__(self, adapter: Qwen2VLAdapter, call, last_hidden: torch.Tensor, captured, grid_thw: torch.Tensor):
        super().__init__(adapter, call)
        self.visual = adapter.visual
        self.unit = adapter.merge**2
        self.grid_thw = grid_thw
        self.captured = captured
        self.sizes = (grid_thw.prod(-1)).tolist()  # patches per image
        self.order = self._merge_order(grid_thw)  # ViT order of merged units -> image order
        self.last_hidden = last_hidden
        self._attention: list[torch.Tensor] | None = None

    def _merge_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        """Qwen2.5-VL runs its blocks in window order; ``order[j]`` is the ViT-order unit of merged token ``j``."""
        window_size = getattr(self.visual, "window_size", None)
        if window_size is None:
            return None
        from transformers.vision_utils import get_vision_window_index

        window_index, _ = get_vision_window_index(
            grid_thw, spatial_merge_size=self.visual.spatial_merge_size, window_size=window_size,
            patch_size=self.visual.patch_size,
        )
        return window_index.to(grid_thw.device).argsort()

    def providers(self, image: int, row: int, columns: torch.Tensor, is_image: torch.Tensor) -> dict[str, Any]:
        return {
            "vision_features": lambda: self.vision_features(image),
            "patch_features": lambda: self.patch_features(image),
            "cls_attention": lambda: self.attention_received()[image],
            **self.text_providers(row, columns, is_image),
        }

    def _units(self, per_patch: torch.Tensor) -> torch.Tensor:
        """``[P, ...]`` per patch in ViT order -> ``[P / unit, unit, ...]`` per merged token in image order."""
        units = per_patch.reshape(per_patch.shape[0] // self.unit, self.unit, *per_patch.shape[1:])
        return units if self.order is None else units[self.order]

    def _image_slice(self, image: int) -> slice:
        start = sum(self.sizes[:image]) // self.unit
        return slice(start, start + self.sizes[image] // self.unit)

    def patch_features(self, image: int) -> torch.Tensor:
        """``[N, unit, Dv]`` the last hidden states of the patches each merged token of ``image`` is made of."""
        return self._units(self.last_hidden)[self._image_slice(image)]

    def vision_features(self, image: int) -> torch.Tensor:
        units = self.patch_features(image)
        return units.reshape(units.shape[0], -1)

    @torch.no_grad()
    def attention_received(self) -> list[torch.Tensor]:
        if self._attention is not None:
            return self._attention
        attn = self.visual.blocks[-1].attn
        hidden = self.captured["hidden"]
        length = hidden.shape[0]
        q, k, _ = attn.qkv(hidden).reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        rotary = importlib.import_module(type(attn).__module__).apply_rotary_pos_emb_vision
        cos, sin = self.captured["rotary"]
        q, k = rotary(q, k, cos, sin)
        # image boundaries in ViT order: windows never straddle images, so each image stays contiguous
        received = torch.empty(length, dtype=torch.float32, device=hidden.device)
        start = 0
        for size in self.sizes:
            qi, ki = q[start : start + size].float(), k[start : start + size].float()
            total = torch.zeros(size, dtype=torch.float32, device=hidden.device)
            # one head and at most ATTENTION_CHUNK scores at a time: memory stays linear in the image's patches
            rows = max(1, ATTENTION_CHUNK // size)
            for head in range(qi.shape[1]):
                if rows >= size:
                    probs = ((qi[:, head] @ ki[:, head].T) * attn.scaling).softmax(dim=-1)
                    total += probs.mean(dim=0)
                    continue
                received_by = torch.zeros(size, dtype=torch.float32, device=hidden.device)
                for first in range(0, size, rows):
                    scores = qi[first : first + rows, head] @ ki[:, head].T
                    received_by += (scores * attn.scaling).softmax(dim=-1).sum(dim=0)
                total += received_by / size
            received[start : start + size] = total / qi.shape[1]
            start += size
        per_token = self._units(received).sum(dim=1)
        self._attention = []
        for image in range(len(self.sizes)):
            values = per_token[self._image_slice(image)]
            self._attention.append(values / values.sum())
        return self._attention
