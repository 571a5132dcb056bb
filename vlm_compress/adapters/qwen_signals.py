"""The lazy signals of Qwen2-VL / Qwen2.5-VL images: the merger's input patches and the ``cls_attention`` proxy.

Qwen's vision transformer has no [CLS] token. ``cls_attention`` is the head-averaged attention each merged token
*receives* from all patches of its image at the encoder's last block, recomputed from that block's own queries
and keys (captured by the adapter's hook), summed over the merged token's patches and normalised to sum to 1.
Qwen2.5-VL runs its blocks in window order; every per-patch value is mapped back to image order here.

Room: adapters. May import the sibling :mod:`.text_signals` and transformers' vision utilities.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import torch

from . import text_signals

if TYPE_CHECKING:
    from .qwen2_vl import Qwen2VLAdapter


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
