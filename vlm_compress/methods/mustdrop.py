"""MustDrop: multi-stage vision token dropping (vision encoding, prefill, decoding).

Liu et al., "Multi-Stage Vision Token Dropping: Towards Efficient Multimodal Large Language Model"
(arXiv 2411.10803). Official code: liuting20/MustDrop (built on SparseVLM's code):
``llava/model/multimodal_encoder/local_merge.py`` (``conditional_pooling``), ``clip_encoder.py`` (merge after
encoder layer 0 with a 3x3 window and threshold 0.8; key set from the [CLS] attention of layer 23, keep rate
0.08), ``llava/model/language_model/modelling_sparse_llama.py`` (``dual_attention_filter`` after layers
2, 6, 10, 14; the KV cache pruning of the decoding stage). LightCompress (ModelTC) re-implements the merge stage
with a ``retained_tokens`` knob (a fixed number of merged windows), which ``budget`` follows here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..functional import dual_attention_keep, key_token_set, spatial_merge_windows, window_similarity
from ..selection import Selection
from ..views import LayerContext, VisualContext
from .base import CONTIGUOUS_ON_LLAVA, Budget, Method, points_after_layers
from .validate import check_bool, check_int, check_layers_after, check_number


@dataclass
class MustDrop(Method):
    """MustDrop's three stages.

    1. **Vision encoding**: spatially adjacent similar tokens are merged: windows of ``window_size`` tokens of
       the grid whose mean pairwise cosine similarity (encoder features) reaches ``spatial_threshold`` become one
       token (the window's mean, in its last token's slot). The ``keep_rate`` share of tokens with the highest
       [CLS] attention forms the *key set*, never dropped later.
    2. **Prefill**: after each layer of ``pruning_layers`` the dual-attention filter drops the visual tokens
       whose summed attention from the prompt's text after the image is below ``global_thr`` of the image's
       total *and* whose largest single attention is below ``individual_thr`` (key tokens are kept).
    3. **Decoding** (``decode_stage``, the output-aware cache policy): after the prefill, the KV caches of the
       layers from the one whose attention the first filter reads up to the last filter keep only the tokens the
       last filter kept, so decode steps there attend only to those (and to the generated tokens).

    Attributes:
        budget: ``None`` (default): the official threshold rule decides how many windows merge. A count or a
            fraction: the merge stage keeps that many tokens, merging the ``(N - budget) // (k - 1)`` most
            similar windows (LightCompress's ``retained_tokens``); a full budget turns both stages off.
        window_size: ``(wh, ww)`` merge window (official ``(3, 3)``).
        spatial_threshold: window similarity from which a window merges (official 0.8).
        keep_rate: share of the tokens in the key set (official 0.08).
        pruning_layers: layers after which the filter runs: ints are layer indices, floats in [0, 1) fractions of
            the depth; default layers 2, 6, 10, 14 of LLaVA-1.5-7B's 32.
        global_thr, individual_thr: the filter's thresholds (the official README's 192-token TextVQA setting:
            0.001 and 0.001; its code defaults 1.0 and 0.0 filter nothing).
        decode_stage: the output-aware KV cache policy of the decoding stage (default ``True``, as the official
            code always applies it); ``False`` leaves every layer's cache as its layer saw the prefill.

    Fidelity choices and what is missing:

    * The official merge runs inside the vision encoder, after its first layer, and the later encoder layers
      see the merged tokens; here it runs once on the encoder's output (similarity on the feature layer's
      hidden states, the projected tokens averaged), as the adapters expose no encoder surgery. On AnyRes images
      it runs per region (thumbnail, crops); regions with padding are not merged.
    * The key set is chosen from the [CLS] attention of the feature layer (layer 23 of LLaVA-1.5's CLIP, the
      official layer) over the unmerged tokens; a merged token is a key token when one of its tokens is.
    * The filter's text rows are the prompt's tokens after the image up to its last token (generated tokens
      never count). Position ids: on LLaVA the sequence the merge shortened is numbered contiguously, as the
      official code (LLaVA's ``prepare_inputs_labels_for_multimodal``) does; the official filter renumbers again
      after each drop, while the in-LLM pruner keeps the ids the tokens entered the language model with.
    * Decoding stage: the official code cuts the caches of layers 2..14 (``pruning_layers[0]`` to
      ``pruning_layers[-1]``) to the last filter's tokens; here the same layers (the filter after layer ``l``
      runs before layer ``l + 1``) except layer 0, whose cache length transformers reads as the sequence's
      length (it matters only when a filter runs after layer 0). ``generate(use_cache=False)`` re-runs the
      prompt at every step and gets the same tokens: the generated tokens' queries in those layers are masked
      off the visual tokens the last filter of the call's first pass dropped. With flash attention, generation
      without a cache is refused under ``decode_stage`` (its padding masks cannot say this).
    """

    budget: Budget | None = None
    window_size: Sequence[int] = (3, 3)
    spatial_threshold: float = 0.8
    keep_rate: float = 0.08
    pruning_layers: Sequence[int | float] = (2 / 32, 6 / 32, 10 / 32, 14 / 32)
    global_thr: float = 0.001
    individual_thr: float = 0.001
    decode_stage: bool = True

    name = "mustdrop"
    description = (
        "multi-stage: merge similar adjacent tokens, key set, dual-attention filter in the LLM (MustDrop)"
    )
    paper = "https://arxiv.org/abs/2411.10803"
    requires = ("vision_features", "cls_attention")
    #: the official code is built on LLaVA's ``prepare_inputs_labels_for_multimodal``: the sequence shortened by
    #: the merge stage is numbered ``0..L'-1``
    default_position_ids = CONTIGUOUS_ON_LLAVA
    budget_optional = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.order != "original":
            raise ValueError(
                f"mustdrop: order must be 'original' (the key set follows the tokens' places), got {self.order!r}"
            )
        window = self.window_size
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            raise ValueError(f"mustdrop: window_size must be a pair (wh, ww), got {window!r}")
        for side in window:
            check_int(self.name, "window_size entries", side, minimum=1, note=" (official (3, 3))")
        if window[0] * window[1] < 2:
            raise ValueError(f"mustdrop: window_size must cover at least 2 tokens, got {tuple(window)!r}")
        self.window_size = tuple(window)
        check_number(self.name, "spatial_threshold", self.spatial_threshold, at_least=-1, at_most=1)
        check_number(self.name, "keep_rate", self.keep_rate, at_least=0, at_most=1, note=" (official 0.08)")
        self.pruning_layers = check_layers_after(self.name, "pruning_layers", self.pruning_layers)
        check_number(self.name, "global_thr", self.global_thr, at_least=0)
        check_number(self.name, "individual_thr", self.individual_thr, at_least=0)
        check_bool(self.name, "decode_stage", self.decode_stage, expected="must be one of (False, True)")

    def full_budget(self, num_tokens: int, image_index: int = 0) -> bool:
        return self.budget is not None and super().full_budget(num_tokens, image_index)

    # -- stage 1: local spatial merge + key set ----------------------------------------------------------
    def _regions(self, ctx: VisualContext) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        device = ctx.features.device
        if ctx.grid is not None:
            return [(torch.arange(ctx.num_tokens, device=device), ctx.grid)]
        regions = [r for r in [ctx.thumbnail, *(ctx.crops or [])] if r is not None]
        return [
            (r.indices.to(device), r.grid)
            for r in regions
            if r.valid is None and r.indices.numel() == r.grid[0] * r.grid[1]
        ]

    def select(self, ctx: VisualContext) -> Selection:
        n = ctx.num_tokens
        target = None if self.budget is None else self.num_to_keep(ctx)
        key = key_token_set(ctx.cls_attention, self.keep_rate)
        info = {"key_set": key.tolist()}
        if target == n:
            return Selection(kept_indices=torch.arange(n, device=ctx.features.device), info=info)
        (
            windows,
            similarity,
        ) = [], []
        for indices, grid in self._regions(ctx):
            region_windows, region_similarity = window_similarity(
                ctx.vision_features[indices], grid, self.window_size
            )
            windows.append(indices[region_windows])
            similarity.append(region_similarity)
        size = self.window_size[0] * self.window_size[1]
        groups = torch.arange(n, device=ctx.features.device)
        if windows:
            windows, similarity = torch.cat(windows), torch.cat(similarity)
            fixed = None if target is None else (n - target) // (size - 1)
            for window in spatial_merge_windows(similarity, self.spatial_threshold, fixed).tolist():
                groups[windows[window]] = windows[window, -1]
        kept = torch.unique(groups)  # ascending; a merged window sits at its last token
        remap = torch.searchsorted(kept, groups)
        features = torch.zeros(kept.numel(), ctx.dim, dtype=torch.float32, device=ctx.features.device)
        features.index_add_(0, remap, ctx.features.float())
        features = (features / torch.bincount(remap, minlength=kept.numel())[:, None]).to(ctx.features.dtype)
        info["key_set"] = torch.unique(kept[remap[key.to(remap.device)]]).tolist()
        return Selection(kept_indices=kept, features=features, groups=remap, info=info)

    # -- stage 2: dual-attention filter ------------------------------------------------------------------
    def prune_layers(self, num_layers: int) -> list[int]:
        return points_after_layers(self.pruning_layers, num_layers)

    def decode_cache_start(self, points: list[int]) -> int | None:
        """The official cut starts at the first filter's layer (``points[0] - 1``: it reads that layer's attention)."""
        return points[0] - 1 if self.decode_stage else None

    def prune_visual(self, ctx: LayerContext) -> torch.Tensor:
        length = ctx.visual.shape[1]
        positions = torch.arange(length, device=ctx.visual.device)
        # every text token after an image (up to the prompt's last token) is one query slot of its row
        slots: dict[tuple[int, int], torch.Tensor] = {}
        per_row: dict[int, list[torch.Tensor]] = {}
        for row, image in ctx.images():
            last = ctx.image_columns(row, image).max()
            text = torch.nonzero(
                ctx.valid[row] & ~ctx.visual[row] & (positions > last) & (positions <= ctx.query[row])
            ).flatten()
            start = sum(t.numel() for t in per_row.get(row, []))
            per_row.setdefault(row, []).append(text)
            slots[(row, image)] = torch.arange(start, start + text.numel())
        width = max([sum(t.numel() for t in parts) for parts in per_row.values()] + [1])
        queries = torch.full((ctx.visual.shape[0], width), -1, dtype=torch.long, device=ctx.visual.device)
        for row, parts in per_row.items():
            joined = torch.cat(parts)
            queries[row, : joined.numel()] = joined
        attention = ctx.query_attention(queries, at="previous")  # [B, Q, L]

        keep = torch.zeros_like(ctx.visual)
        for (row, image), slot in slots.items():
            columns = ctx.image_columns(row, image)
            if slot.numel() == 0:  # no text after the image: nothing to filter by
                keep[row, columns] = True
                continue
            kept = dual_attention_keep(
                attention[row, slot.to(attention.device)][:, columns], self.global_thr, self.individual_thr
            )
            kept |= self._key_columns(ctx, row, image, columns)
            keep[row, columns[kept]] = True
        return keep

    @staticmethod
    def _key_columns(ctx: LayerContext, row: int, image: int, columns: torch.Tensor) -> torch.Tensor:
        """``[n]`` bool over the image's current columns: which hold key tokens."""
        selection = ctx.selections.get(image)
        if selection is None or ctx.columns is None or not selection.info.get("key_set"):
            return torch.zeros(columns.numel(), dtype=torch.bool, device=columns.device)
        key_columns = ctx.scratch.setdefault("key_columns", {})
        if (row, image) not in key_columns:  # at the first pruning layer the image still has all its columns
            placed = selection.kept_indices.to(
                columns.device
            )  # token index of the image's i-th visual column
            key = torch.tensor(selection.info["key_set"], device=columns.device)
            key_columns[(row, image)] = ctx.columns[row, columns][torch.isin(placed, key)]
        return torch.isin(ctx.columns[row, columns], key_columns[(row, image)])
