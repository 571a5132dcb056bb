"""CDPruner: keep the visual tokens of maximal conditional diversity, a DPP conditioned on the instruction.

Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs"
(arXiv 2506.10967, NeurIPS 2025); official code: Theia-4869/CDPruner (LLaVA-1.5 / LLaVA-NeXT only),
``llava/model/llava_arch.py`` (``encode_images``) and ``llava/model/multimodal_encoder/clip_encoder.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..functional import conditional_kernel, dpp_map, instruction_relevance
from ..selection import Selection
from ..views import VisualContext
from .base import CONTIGUOUS_ON_LLAVA, Method, select_per_subimage, subimages
from .validate import check_bool, is_number

#: the benchmark suffix the official evaluation removes from the question before embedding it
#: (``llava/eval/model_vqa_loader.py``)
PROMPT_SUFFIX = "Answer the question using a single word or phrase."


@dataclass
class CDPruner(Method):
    """Greedy MAP of a DPP whose kernel ``L = diag(r) S diag(r)`` joins the similarity ``S`` of the visual
    tokens (cosine of the projected tokens, as the official code) with their relevance ``r`` to the
    instruction (see :mod:`vlm_compress.functional.cdpruner`).

    **The text side differs from the official code.** The official code embeds the question with CLIP's
    text tower and compares it with the visual tokens passed through CLIP's ``post_layernorm`` and
    ``visual_projection``; HuggingFace LLaVA checkpoints ship neither (only ``CLIPVisionModel``) and Qwen's
    encoder has no text tower. Here the relevance compares the projected visual tokens with the question's
    words embedded by the language model's input embeddings (the ``question`` and ``text_embedder`` signals,
    which need ``processor=``; the benchmark suffix ``"Answer the question using a single word or phrase."``
    is removed as in the official evaluation). Without a tokenizer it uses the prompt's text tokens
    (``text_embeds``).

    The official LLaVA code negates the similarity before the min-max normalisation
    (``relevance = (-relevance).mean(dim=-1)``); the authors observed this only for CLIP (issues #9 and #14
    of the official repository), so with the language model's embeddings it is off by default
    (``negate_relevance=True`` restores it).

    **AnyRes images** (LLaVA-NeXT; ``per_subimage=True``): as the official code, every encoder pass (the
    thumbnail, then each crop) runs its own DPP over its own tokens and keeps its own share of the budget (split
    evenly, :func:`~vlm_compress.methods.base.split_budget`; ``visual_token_num`` per pass officially, so a budget
    of ``64 * 5`` is its 64 per pass of a 4-crop image); the relevance is min-max normalised over the whole image
    (the official code: over the batch of its passes). No newline token survives (the official code strips
    ``_unpad`` and uses the plain ``spatial`` merge; ``Selection.keep_newlines=False``); the thumbnail's kept
    tokens come first, then the crops' in the grid's raster order. The crops' candidates are their un-padded
    tokens (the official code: all ``s * s`` of every crop). See ``docs/cdpruner.md``.

    Attributes:
        budget: tokens kept per image; default ``64 / 576`` (64 of LLaVA-1.5's 576, one of the paper's
            settings 128 / 64 / 32).
        theta: the paper's relevance weight: ``r -> exp(alpha r)``, ``alpha = theta / (2 (1 - theta))``,
            ``theta`` in ``[0, 1)``; ``None`` (default) uses ``r`` as it is, as the official code does (its
            ``theta = 0.5`` is commented out).
        negate_relevance: negate the text similarity before normalising it (the official LLaVA code).
        per_subimage: AnyRes images: one DPP per encoder pass, as above. ``False``: one DPP over all the image's
            content tokens, with a newline for every grid row that keeps a token. No effect on other models.
    """

    budget: int | float = 64 / 576
    theta: float | None = None
    negate_relevance: bool = False
    per_subimage: bool = True

    name = "cdpruner"
    description = (
        "conditional DPP: diverse visual tokens weighted by their relevance to the question (CDPruner)"
    )
    paper = "https://arxiv.org/abs/2506.10967"
    requires = ("text_embeds",)
    #: official code (``llava/model/llava_arch.py``): LLaVA's ``prepare_inputs_labels_for_multimodal`` builds
    #: the shortened sequence and numbers it ``0..L'-1``; no official code for Qwen
    default_position_ids = CONTIGUOUS_ON_LLAVA

    def __post_init__(self) -> None:
        super().__post_init__()
        # alpha = theta / (2 (1 - theta)) needs 0 <= theta < 1
        if self.theta is not None and not (is_number(self.theta) and 0 <= self.theta < 1):
            raise ValueError(
                f"{self.name}: theta must be a number in [0, 1) or None (the official code's plain relevance), "
                f"got {self.theta!r}"
            )
        check_bool(self.name, "negate_relevance", self.negate_relevance)
        check_bool(self.name, "per_subimage", self.per_subimage)

    def text_tokens(self, ctx: VisualContext) -> torch.Tensor:
        """``[m, D]`` the instruction: the question's words embedded by the language model, else the prompt's
        text tokens."""
        if ctx.has("question") and ctx.has("text_embedder"):
            question = ctx.signals.get("question").replace(PROMPT_SUFFIX, "").strip()
            if question:
                embeds = ctx.signals.get("text_embedder")(question)
                if embeds.shape[0] > 0:
                    return embeds
        return ctx.text_embeds

    def select(self, ctx: VisualContext) -> Selection:
        k = self.num_to_keep(ctx)
        relevance = instruction_relevance(
            ctx.features, self.text_tokens(ctx).to(ctx.features.device), negate=self.negate_relevance
        )
        if k == ctx.num_tokens:
            return self.keep_all(ctx, relevance)
        regions = subimages(ctx) if self.per_subimage else None
        if regions is None:
            kernel = conditional_kernel(ctx.features, relevance, theta=self.theta)
            kept = dpp_map(kernel, k)
            return Selection(kept_indices=kept.to(ctx.features.device), scores=relevance)

        # one DPP per encoder pass (thumbnail, then crops) on the image's relevance, the budget split evenly
        def pick(index: torch.Tensor, count: int) -> torch.Tensor:
            kernel = conditional_kernel(
                ctx.features[index], relevance[index.to(relevance.device)], theta=self.theta
            )
            return dpp_map(kernel, count)

        kept, counts = select_per_subimage(regions, k, pick)
        return Selection(
            kept_indices=kept, scores=relevance, info={"per_subimage": counts}, keep_newlines=False
        )
