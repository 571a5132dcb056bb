"""DART: inside the language model, keep the visual tokens least duplicated by a few pivot tokens.

Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More"
(arXiv 2502.11494, EMNLP 2025); official code: ZichenWen1/DART, ``get_retained_image_token`` and the
``DART_K_norm`` decoder in ``llava/model/language_model/modeling_llama_self.py`` (LLaVA-1.5 / LLaVA-NeXT),
``Qwen2-VL/Qwen2VL_DART/modeling_qwen2_vl_self.py`` and ``Qwen2_5-VL/Qwen2_5VL_DART/`` (Qwen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..functional import dart_select
from ..views import LayerContext
from .base import InLLMMethod, resolve_budget
from .validate import check_int


@dataclass
class DART(InLLMMethod):
    """Keep every visual token through layers ``0..K-1``; before layer ``K``, per image: choose
    ``pivot_image_tokens`` visual and ``pivot_text_tokens`` text pivots (the text after the image), then let
    every pivot keep the visual tokens least similar to it (cosine), until ``budget`` tokens are kept,
    pivots included (see :func:`vlm_compress.functional.dart_select`).

    Defaults are the official scripts' for LLaVA-1.5, LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL alike:
    ``--pruned_layer 2 --pivot_image_token 4 --pivot_text_token 4``.

    As the official code (``DART_K_norm``): pivots rank by the L1 norm of layer ``K-1``'s key states (after the
    key norm and rotary, all heads concatenated; :attr:`~vlm_compress.views.LayerContext.keys`), and the
    cosines compare the states entering layer ``K`` after the language model's final norm
    (:attr:`~vlm_compress.views.LayerContext.final_norm`, the official ``self.norm``).

    **Where this differs from the official code**:

    - counts: the official code gives every pivot ``max_num_trunction // (P_v + P_t)`` tokens (LLaVA:
      ``128 // 8 = 16``, so 4 + 128 = 132 kept) or ``int(N (1 - reduction_ratio) / (P_v + P_t))`` (Qwen);
      here exactly ``budget`` tokens are kept, the visual pivots among them, the rest split as evenly as
      possible over the pivots.
    - pivot order: the official code visits the pivots in a Python ``set``'s order (by hash); here visual
      pivots first, then text pivots, each in sequence order. Ties go to the lowest index.
    - batches and several images: the official code handles one image of batch row 0; here every image of
      every row is pruned on its own, with the prompt's text after it as its text (all its row's prompt
      text when none follows it). The prompt ends at the last column the prompt's last token attends to
      (``LayerContext`` does not name that column; generated tokens, in a ``generate`` without cache,
      are after it).

    Attributes:
        budget: visual tokens per image kept from layer ``K`` on; default ``64 / 576`` (the paper's
            headline, 88.9% of LLaVA-1.5's 576 tokens pruned; the official scripts' default is 128).
        prune_layer: ``K`` (official ``pruned_layer = 2``).
        pivot_image_tokens: visual pivots (official 4).
        pivot_text_tokens: text pivots (official 4).
    """

    budget: int | float = 64 / 576
    prune_layer: int = 2
    pivot_image_tokens: int = 4
    pivot_text_tokens: int = 4

    name = "dart"
    description = "in-LLM: keep the visual tokens least duplicated by a few pivot tokens at layer K (DART)"
    paper = "https://arxiv.org/abs/2502.11494"
    #: official code: ``position_ids = keep_indexs`` (LLaVA) and ``position_ids[:, :, keep_indexs]`` (Qwen):
    #: the kept columns' original ids
    default_position_ids = "original"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.name, "prune_layer", self.prune_layer, minimum=1, note=" (the official code uses 2)")
        check_int(self.name, "pivot_image_tokens", self.pivot_image_tokens, minimum=1, note=" (official 4)")
        check_int(self.name, "pivot_text_tokens", self.pivot_text_tokens, minimum=0, note=" (official 4)")

    def prune_layers(self, num_layers: int) -> list[int]:
        return [self.prune_layer]

    def prune_visual(self, ctx: LayerContext) -> torch.Tensor:
        keep = torch.zeros_like(ctx.visual)
        # the official code: pivots by the L1 norm of layer K-1's key states, similarities between the layer's
        # input states after the language model's final norm
        scores = ctx.keys.float().abs().sum(dim=-1)  # [B, L]
        states = ctx.hidden_states if ctx.final_norm is None else ctx.final_norm(ctx.hidden_states)
        # the prompt's text: generate without cache appends the generated tokens, which the prompt's last token
        # (the query of ``ctx.attention``) does not see, so the prompt ends at its last attended column
        columns_seen = torch.arange(states.shape[1], device=states.device).expand_as(ctx.visual)
        prompt_end = torch.where(ctx.attention > 0, columns_seen, -1).amax(dim=1, keepdim=True)
        text = ctx.valid & ~ctx.visual & (columns_seen <= prompt_end)
        for row, image in ctx.images():
            columns = ctx.image_columns(row, image)
            after = text[row].clone()
            after[: int(columns[-1]) + 1] = False
            text_columns = torch.nonzero(after if bool(after.any()) else text[row]).flatten()
            count = resolve_budget(self.budget, ctx.tokens_before[image], image, checked=True)
            kept = dart_select(
                states[row, columns],
                scores[row, columns],
                states[row, text_columns],
                scores[row, text_columns],
                min(count, columns.numel()),
                pivot_image_tokens=self.pivot_image_tokens,
                pivot_text_tokens=self.pivot_text_tokens,
            )
            keep[row, columns[kept]] = True
        return keep
