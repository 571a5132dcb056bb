"""PyramidDrop: drop visual tokens in stages inside the language model, a pyramid of shrinking sequences.

Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy
Reduction" (arXiv 2410.17247). Official code: Cooperx521/PyramidDrop,
``llava/model/modeling_llama_pdrop.py`` (``pdrop_forward``, ``pdrop_rank_drop``); its LLaVA-1.5 scripts use
``--layer_list [8,16,24] --image_token_ratio_list [0.5,0.25,0.125]`` (``lambda = 0.5``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..functional import keep_top_attended, pyramid_keep_count, pyramid_layers
from ..views import LayerContext
from .base import InLLMMethod
from .validate import check_number, is_int, is_number


@dataclass
class PDrop(InLLMMethod):
    """Stage ``s`` ends before layer ``layer_list[s-1]``: there the prompt's last instruction token attends
    (head-averaged) to every visual token, and each image keeps its top ``budget * lambda^(s-1)`` tokens.

    As the official ``pdrop_rank_drop``, the ranking attention is that of the layer about to run (its own input
    norm, queries and keys on the hidden states that enter it, causal, with rotary), taken before any token of
    that stage is dropped; ties go to the earlier token.

    Attributes:
        budget: visual tokens per image kept after the first stage (int), or that fraction of each image's
            tokens (float); the paper's LLaVA-1.5 setting keeps 50% (``0.5``), then 25%, 12.5%.
        layer_list: the layers where stages end: ints are layer indices, floats in (0, 1) fractions of the
            depth (default ``(0.25, 0.5, 0.75)``: layers 8, 16, 24 of LLaVA-1.5-7B's 32, the paper's setting).
        lambda_: the paper's ratio ``lambda`` in (0, 1]: each stage keeps ``lambda`` times the previous one.

    Fidelity: the official code numbers the shortened sequence ``0..L'-1`` after every drop; the in-LLM pruner
    keeps the kept tokens' original position ids (as FastV's official code does), so the rotary phases of the
    text after the image do not shift. A full budget turns every stage off (the unpatched model).
    """

    budget: int | float = 0.5
    layer_list: Sequence[int | float] = (0.25, 0.5, 0.75)
    lambda_: float = 0.5

    name = "pdrop"
    description = "in-LLM staged dropping: at several layers keep the tokens the last instruction token attends to (PyramidDrop)"
    paper = "https://arxiv.org/abs/2410.17247"
    #: the in-LLM pruner keeps original position ids (the official code renumbers; see the class docstring)
    default_position_ids = "original"

    def __post_init__(self) -> None:
        super().__post_init__()
        layers = self.layer_list
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(f"pdrop: layer_list must be a non-empty list of layers, got {layers!r}")
        for entry in layers:
            if is_int(entry):
                if entry < 1:
                    raise ValueError(f"pdrop: layer_list entries must be layers >= 1, got {entry!r}")
            elif not (is_number(entry) and isinstance(entry, float) and 0.0 < entry < 1.0):
                raise ValueError(
                    "pdrop: layer_list entries must be ints >= 1 (layers) or floats in (0, 1) (fractions of the "
                    f"depth), got {entry!r}"
                )
        check_number(self.name, "lambda_", self.lambda_, above=0, at_most=1, note=" (the paper uses 0.5)")
        self.layer_list = tuple(layers)

    def prune_layers(self, num_layers: int) -> list[int]:
        return pyramid_layers(num_layers, self.layer_list)

    def prune_visual(self, ctx: LayerContext) -> torch.Tensor:
        stage = pyramid_layers(ctx.num_layers, self.layer_list).index(ctx.layer) + 1
        attention = ctx.query_attention(ctx.query[:, None], at="current")[:, 0]
        budget = self.budget

        def keep_count(image: int, n: int) -> int:
            image_budget = budget[image] if isinstance(budget, (list, tuple)) else budget
            return pyramid_keep_count(ctx.tokens_before[image], image_budget, self.lambda_, stage)

        return keep_top_attended(attention, ctx.image_of, keep_count)
