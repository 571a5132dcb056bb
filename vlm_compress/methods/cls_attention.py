"""Top-k by the vision encoder's [CLS] attention (the signal of FasterVLM and VisionZip's dominant tokens)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..views import VisualContext
from .base import CONTIGUOUS_ON_LLAVA, Method


@dataclass
class ClsAttention(Method):
    """Keep the ``budget`` tokens that the encoder's [CLS] query attends to most at the feature layer
    (head-averaged), as FasterVLM (arXiv 2412.01818) and VisionZip (arXiv 2412.04467) do."""

    name = "cls_attention"
    description = "top-k by the vision encoder's [CLS] attention at the feature layer (FasterVLM/VisionZip)"
    paper = "https://arxiv.org/abs/2412.01818"
    requires = ("cls_attention",)
    #: FasterVLM's official code (Theia-4869/FasterVLM, ``llava/model/llava_arch.py``) numbers the shortened
    #: sequence ``0..L'-1``; it has no Qwen code
    default_position_ids = CONTIGUOUS_ON_LLAVA

    def score(self, ctx: VisualContext) -> torch.Tensor:
        return ctx.cls_attention
