"""MMTok: choose the visual tokens that best cover the question's words and the image itself.

Dong et al., "MMTok: Multimodal Coverage Maximization for Efficient Inference of VLMs" (arXiv 2508.18264;
official code: Thames-H/26nips-mmtok).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..functional import mmtok_coverage
from ..selection import Selection
from ..views import VisualContext
from .base import CONTIGUOUS_ON_LLAVA, Method, select_per_subimage, subimages
from .validate import check_choice, check_number

#: benchmark prompt suffixes the official text processor removes before extracting keywords
PROMPT_SUFFIXES = (
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
)
#: the official stop-word list: words with little visual content
NON_VISUAL_WORDS = frozenset(
    {
        *("a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "have", "has", "had"),
        *("do", "does", "did", "it", "they", "he", "she", "we", "you", "i", "what", "where", "when"),
        *("why", "how", "who", "which", "and", "or", "but", "so", "if", "then", "question", "answer"),
        *("to", "for", "with", "by", "from", "at", "into", "onto", "upon"),
    }
)
DEFAULT_QUESTION = "What do you see in this image?"
#: model types whose official MMTok defaults are the Qwen ones (``mmtok/qwen/``)
QWEN_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
TEXT_SOURCES = ("keywords", "question")
VISION_POOLINGS = ("concat", "mean")
_WORD = re.compile(r"\b\w+\b")


def extract_keywords(text: str) -> str:
    """The question's visually meaningful words, space-separated (the official keyword extraction).

    Drops the benchmark suffixes, splits on ``\\b\\w+\\b``, drops the stop words; if nothing is left, returns
    the text with the suffixes removed.
    """
    for suffix in PROMPT_SUFFIXES:
        text = text.replace(suffix, "")
    words = [word for word in _WORD.findall(text) if word.lower() not in NON_VISUAL_WORDS]
    return " ".join(words) if words else text


@dataclass
class MMTok(Method):
    """Greedy maximum coverage (see :func:`vlm_compress.functional.mmtok_coverage`): the kept tokens must cover
    the question's text (text-vision similarity in the language model's embedding space, softmax with
    ``tv_temperature``) and the image's own tokens (vision-vision similarity in the encoder's feature space,
    softmax with ``vv_temperature``, weighted by ``alpha``).

    The text side is embedded with the language model's own input embeddings, without BOS. It needs the
    processor (``vlmc.compress(model, "mmtok", budget=64, processor=processor)``); without one, the prompt's
    text tokens are used as they are.

    Fields left at ``None`` take the official code's value for the model family (LLaVA-1.5 / LLaVA-NeXT;
    Qwen2-VL / Qwen2.5-VL):

    - ``tv_temperature``: 0.02; 0.01.
    - ``text_source``: ``"keywords"`` (the question's :func:`extract_keywords`); ``"question"``
      (``"Question: {q}"`` with every word kept).
    - ``vision_pooling``: ``"concat"`` (``vision_features`` as they are); ``"mean"`` (the mean of the 4
      pre-merger patches of each merged token, ``patch_features``).

    Attributes:
        per_subimage: AnyRes images (LLaVA-NeXT): one selection per sub-image, the thumbnail and every crop,
            the budget split evenly over them (the official code keeps ``target_vision_tokens`` per 576-token
            sub-image; a crop whose un-padded tokens are fewer than its share passes the rest on to the others),
            and no row-newline token is kept. ``False``: one selection over all the image's content tokens,
            and every grid row that keeps a token keeps its newline. No effect on other models.
        exclude_padding: LLaVA-1.5 with pad-to-square: never keep a token whose patch lies fully in the padded
            band (the ``padding_mask`` signal, known when the call passes the images' original ``image_sizes``;
            the official ``remove_padding_indices=True``). When the budget exceeds the content tokens, every
            content token is kept and the rest is chosen among the padding tokens (``info["padding_fill"]``).
    """

    alpha: float = 0.5
    tv_temperature: float | None = None
    vv_temperature: float = 0.2
    text_source: str | None = None
    vision_pooling: str | None = None
    per_subimage: bool = True
    exclude_padding: bool = True

    name = "mmtok"
    description = "multimodal coverage maximisation: cover the question's keywords and the image (MMTok)"
    paper = "https://arxiv.org/abs/2508.18264"
    requires = ("vision_features", "text_embeds")
    #: official code (Thames-H/26nips-mmtok): LLaVA renumbers the shortened sequence ``0..L'-1``
    #: (``mmtok/llava/llava_arch_mmtok.py``); Qwen2.5-VL gathers the full input's M-RoPE ids onto the kept
    #: columns (``mmtok/qwen/qwen2_5_VLmodel_mmtok.py``), and so does Qwen3-VL (``mmtok/qwen/qwen3_VLmodel_mmtok.py``,
    #: with its DeepStack features gathered at the same indices); Qwen2-VL, without official code, does the same
    default_position_ids = {**CONTIGUOUS_ON_LLAVA, **dict.fromkeys(QWEN_MODEL_TYPES, "original")}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.name, "alpha", self.alpha, at_least=0, typed=False)
        for field_name in ("tv_temperature", "vv_temperature"):
            check_number(
                self.name,
                field_name,
                getattr(self, field_name),
                above=0,
                typed=False,
                allow_none=True,
                note=" (or None for the model's default)",
            )
        check_choice(self.name, "text_source", self.text_source, TEXT_SOURCES, allow_none=True)
        check_choice(self.name, "vision_pooling", self.vision_pooling, VISION_POOLINGS, allow_none=True)

    # -- the official per-family defaults ----------------------------------------------------------------
    @staticmethod
    def _is_qwen(ctx: VisualContext) -> bool:
        return ctx.model_type in QWEN_MODEL_TYPES

    def _family_default(self, ctx: VisualContext, field_name: str, *, llava: object, qwen: object) -> object:
        value = getattr(self, field_name)
        if value is not None:
            return value
        return qwen if self._is_qwen(ctx) else llava

    def resolved_tv_temperature(self, ctx: VisualContext) -> float:
        # Qwen: mmtok/qwen/qwen2_5_vl_mmtok.py, mmtok_qwen2_5_vl() and qwen3_vl_mmtok.py, mmtok_qwen3_vl():
        # softmax_tv_temperature=0.01;
        # LLaVA: mmtok/llava/llava_inject.py, mmtok(): softmax_tv_temperature=0.02
        return self._family_default(ctx, "tv_temperature", llava=0.02, qwen=0.01)

    def resolved_text_source(self, ctx: VisualContext) -> str:
        # Qwen: mmtok/core/mmtok_core.py, MMTokCore.apply_selection_preprocess_qwen(): f"Question: {q}", keyword
        # extraction only with clean_text (never set); LLaVA: MMTokCore.apply_selection(): extract_keywords_simple
        return self._family_default(ctx, "text_source", llava="keywords", qwen="question")

    def resolved_vision_pooling(self, ctx: VisualContext) -> str:
        # Qwen: mmtok/qwen/modeling_qwen2_5_vl_mmtok.py, Qwen2_5_VisionTransformerPretrainedModel_MMTok.forward():
        # img_features.reshape(seq_len // 4, 4, -1).mean(dim=1), the last block's output before the merger;
        # Qwen3-VL: modeling_qwen3_vl_mmtok.py, Qwen3VLVisionModel_MMTok.forward(): the same mean (selection_features)
        return self._family_default(ctx, "vision_pooling", llava="concat", qwen="mean")

    # -- the two target sets -----------------------------------------------------------------------------
    def text_tokens(self, ctx: VisualContext) -> torch.Tensor:
        """``[m, D]`` the text side: the question (as keywords or ``"Question: {q}"``, see ``text_source``)
        embedded when a tokenizer is available, else the prompt's tokens."""
        if ctx.has("question") and ctx.has("text_embedder"):
            question = ctx.signals.get("question").strip() or DEFAULT_QUESTION
            if self.resolved_text_source(ctx) == "question":
                text = f"Question: {question}"
            else:
                text = extract_keywords(question)
            embeds = ctx.signals.get("text_embedder")(text)
            if embeds.shape[0] > 0:
                return embeds
        return ctx.text_embeds

    def vision_tokens(self, ctx: VisualContext) -> torch.Tensor:
        """``[N, Dv]`` the vision-vision side in the encoder's space: ``vision_features``, or with
        ``vision_pooling="mean"`` the mean of each merged token's patches (``patch_features``) where the model
        merges patches (Qwen2-VL); elsewhere every token is one patch and both are the same."""
        if self.resolved_vision_pooling(ctx) == "mean" and ctx.has("patch_features"):
            return ctx.signals.get("patch_features").mean(dim=1)
        return ctx.vision_features

    # -- selection -----------------------------------------------------------------------------------------
    def select(self, ctx: VisualContext) -> Selection:
        k = self.num_to_keep(ctx)
        if k == ctx.num_tokens:
            return self.keep_all(ctx)
        text, vision = self.text_tokens(ctx), self.vision_tokens(ctx)
        if self.per_subimage and ctx.thumbnail is not None and ctx.crops:
            return self._select_per_subimage(ctx, k, text, vision)
        if self.exclude_padding and ctx.has("padding_mask"):
            padding = ctx.signals.get("padding_mask").to(ctx.features.device)
            if bool(padding.any()):
                return self._select_without_padding(ctx, k, text, vision, padding)
        kept = self._coverage(ctx, text, ctx.features, vision, k)
        return Selection(kept_indices=kept.to(ctx.features.device))

    def _coverage(
        self,
        ctx: VisualContext,
        text: torch.Tensor,
        features: torch.Tensor,
        vision: torch.Tensor,
        k: int,
        exclude: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return mmtok_coverage(
            text,
            features,
            vision,
            k,
            alpha=self.alpha,
            tv_temperature=self.resolved_tv_temperature(ctx),
            vv_temperature=self.vv_temperature,
            exclude=exclude,
        )

    def _select_per_subimage(
        self, ctx: VisualContext, k: int, text: torch.Tensor, vision: torch.Tensor
    ) -> Selection:
        """One coverage selection per sub-image (thumbnail, then crops), the budget split evenly; no newlines
        (``restore_image_features_sorted`` in the official ``mmtok/llava/llava_arch_mmtok.py``)."""
        kept, counts = select_per_subimage(
            subimages(ctx),
            k,
            lambda index, count: self._coverage(ctx, text, ctx.features[index], vision[index], count),
        )
        kept_indices = kept.sort().values
        return Selection(kept_indices=kept_indices, info={"per_subimage": counts}, keep_newlines=False)

    def _select_without_padding(
        self, ctx: VisualContext, k: int, text: torch.Tensor, vision: torch.Tensor, padding: torch.Tensor
    ) -> Selection:
        """Coverage over the content tokens only; a budget above them keeps them all and fills the rest with a
        coverage selection among the padding tokens."""
        content = torch.nonzero(~padding).flatten()
        info = {"padding_tokens": int(padding.sum())}
        if k <= content.numel():
            kept = self._coverage(
                ctx, text, ctx.features, vision, k, exclude=torch.nonzero(padding).flatten()
            )
            return Selection(kept_indices=kept.to(ctx.features.device), info=info)
        pad = torch.nonzero(padding).flatten()
        fill = k - content.numel()
        local = self._coverage(ctx, text, ctx.features[pad], vision[pad], fill)
        info["padding_fill"] = fill
        kept = torch.cat([content, pad[local.to(pad.device)]]).sort().values
        return Selection(kept_indices=kept, info=info)
