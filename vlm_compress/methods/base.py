"""The base class of every compression method.

A method is a small ``@dataclass`` whose fields are its hyper-parameters (named as in its paper). It sees one
image at a time through a :class:`~vlm_compress.views.VisualContext` and returns a
:class:`~vlm_compress.selection.Selection`. Score-then-top-k methods implement :meth:`Method.score`; greedy or
structured methods implement :meth:`Method.select`. Methods that also prune inside the language model
(stage 2) implement :meth:`Method.prune_layers` and :meth:`Method.prune_visual` (see
:class:`~vlm_compress.views.LayerContext`); :meth:`Method.prune` keeps every column of an image whose budget
keeps all its tokens, so a full budget turns stage 2 off in every method.

Hyper-parameters are checked in ``__post_init__`` with :mod:`vlm_compress.methods.validate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from ..errors import BudgetError
from ..functional import topk_indices
from ..selection import ORDERS, POSITION_POLICIES, Selection
from ..views import LayerContext, VisualContext
from .validate import check_choice, is_int

Budget = int | float | Sequence[int | float]
#: ``default_position_ids`` of methods whose official code is built on LLaVA's ``prepare_inputs_labels_for_multimodal``,
#: which numbers the shortened sequence ``0..L'-1``
CONTIGUOUS_ON_LLAVA = MappingProxyType({"llava": "contiguous", "llava_next": "contiguous"})


def split_budget(total: int, capacities: list[int]) -> list[int]:
    """``total`` tokens split as evenly as possible over parts holding ``capacities`` tokens.

    Every part gets the same share; what a part cannot hold is shared out again among the parts with room; a
    remainder smaller than the parts with room gives one more token to the first of them.
    ``total <= sum(capacities)``.
    """
    counts = [0] * len(capacities)
    remaining = total
    open_parts = [i for i, capacity in enumerate(capacities) if capacity > 0]
    while remaining > 0 and open_parts:
        share = remaining // len(open_parts)
        if share == 0:
            for i in open_parts[:remaining]:
                counts[i] += 1
            break
        for i in open_parts:
            added = min(share, capacities[i] - counts[i])
            counts[i] += added
            remaining -= added
        open_parts = [i for i in open_parts if counts[i] < capacities[i]]
    return counts


def subimages(ctx: VisualContext) -> list[torch.Tensor] | None:
    """The token indices of an AnyRes image's sub-images, one encoder pass each (the thumbnail, then the crops in
    row-major layout order), on ``ctx.features``' device; ``None`` for an image without crops."""
    if ctx.thumbnail is None or not ctx.crops:
        return None
    device = ctx.features.device
    return [region.indices.to(device) for region in (ctx.thumbnail, *ctx.crops)]


def points_after_layers(entries: Sequence[int | float], num_layers: int) -> list[int]:
    """The pruning points (decoder layers ``K`` before which :meth:`Method.prune` runs) of a schedule that prunes
    *after* the given layers: ints are layer indices, floats fractions of the depth (rounded); points outside
    ``1..num_layers-1`` are left out, each point once, ascending (:func:`.validate.check_layers_after`)."""
    points: list[int] = []
    for entry in entries:
        point = (entry if is_int(entry) else round(entry * num_layers)) + 1
        if 1 <= point < num_layers and point not in points:
            points.append(point)
    return sorted(points)


def select_per_subimage(
    regions: list[torch.Tensor], k: int, pick: Callable[[torch.Tensor, int], torch.Tensor]
) -> tuple[torch.Tensor, list[int]]:
    """One selection per sub-image (:func:`subimages`), ``k`` tokens split evenly over them (:func:`split_budget`).

    ``pick(index, count)`` chooses ``count`` of the sub-image's tokens ``index`` (it returns positions in ``index``)
    when its share is smaller than it; a share that holds every token keeps them as they are. Returns the kept
    token indices, sub-image after sub-image in each one's chosen order, and the shares.
    """
    counts = split_budget(k, [int(index.numel()) for index in regions])
    kept = []
    for index, count in zip(regions, counts):
        if count == index.numel():
            kept.append(index)
        elif count > 0:
            kept.append(index[pick(index, count).to(index.device)])
    return torch.cat(kept), counts


def _check_budget_value(value: Any, *, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BudgetError(
            f"{where} must be an int (tokens kept per image) or a float in (0, 1] (fraction of each image's "
            f"tokens), got {type(value).__name__} {value!r}"
        )
    if isinstance(value, float):
        if not math.isfinite(value) or not 0.0 < value <= 1.0:
            raise BudgetError(
                f"{where}: a float budget is a fraction of the image's tokens and must lie in (0, 1], got {value}; "
                "pass an int to keep a number of tokens"
            )
    elif value <= 0:
        raise BudgetError(f"{where} must be at least 1 token, got {value}")


def check_budget(budget: Any) -> None:
    """Validate a budget's type and range without knowing the image (raises :class:`BudgetError`)."""
    if isinstance(budget, (list, tuple)):
        if not budget:
            raise BudgetError("a per-image budget list must not be empty")
        for i, value in enumerate(budget):
            _check_budget_value(value, where=f"budget[{i}]")
    else:
        _check_budget_value(budget, where="budget")


def resolve_budget(budget: Budget, num_tokens: int, image_index: int = 0, *, checked: bool = False) -> int:
    """Number of tokens to keep for an image of ``num_tokens`` tokens.

    ``int``: that many tokens (must be ``<= num_tokens``); ``float`` in (0, 1]: ``round(budget * num_tokens)``,
    at least 1; a list or tuple gives one budget per image of the call, in batch order. ``checked=True``: the
    budget's type and range were validated already (a :class:`Method` validates its budget when it is set).
    """
    if not checked:
        check_budget(budget)
    if isinstance(budget, (list, tuple)):
        if image_index >= len(budget):
            raise BudgetError(
                f"per-image budgets: got {len(budget)} budget(s) but the call has at least {image_index + 1} images"
            )
        budget = budget[image_index]
    if isinstance(budget, float):
        return max(1, min(num_tokens, round(budget * num_tokens)))
    if budget > num_tokens:
        raise BudgetError(
            f"budget {budget} is larger than the image's {num_tokens} visual tokens; "
            f"allowed: 1..{num_tokens} (or a fraction in (0, 1])"
        )
    return budget


@dataclass
class Method:
    """Base class: hyper-parameters are dataclass fields; ``budget`` and ``order`` are common to all.

    Attributes:
        budget: visual tokens kept per image (int), a fraction of each image's tokens (float in (0, 1]),
            or a list with one of those per image of the call.
        order: how kept tokens are arranged in the sequence: ``"original"`` (their order in the image),
            ``"selection"`` (the order the method picked them), ``"score"`` (descending score).
    """

    budget: Budget = 0.25
    order: str = "original"

    name: ClassVar[str] = "method"
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    #: signals of :class:`VisualContext` the method reads (adapters without them raise a clear error early)
    requires: ClassVar[tuple[str, ...]] = ()
    #: position ids its official code gives the shortened sequence (:data:`POSITION_POLICIES`): one policy, or
    #: one per ``config.model_type`` (families not listed: ``"original"``); ``"original"`` without official code
    default_position_ids: ClassVar[str | Mapping[str, str]] = "original"
    #: ``budget=None`` is allowed: the method then sizes its selection by its own rule (GlobalCom²'s ratio)
    budget_optional: ClassVar[bool] = False

    def __setattr__(self, name: str, value: Any) -> None:
        # the one place a method's budget is validated (at construction and on any later assignment), so the
        # per-image resolution during a call trusts it
        if name == "budget" and (value is not None or not self.budget_optional):
            check_budget(value)
        super().__setattr__(name, value)

    def __post_init__(self) -> None:
        check_choice(self.name, "order", self.order, ORDERS)

    # -- to override -----------------------------------------------------------------------------------
    def score(self, ctx: VisualContext) -> torch.Tensor:
        """``[N]`` importance of every token (higher is kept first). Override this or :meth:`select`."""
        raise TypeError(f"{type(self).__name__} must override score() or select()")

    def select(self, ctx: VisualContext) -> Selection:
        """Default: keep the top-``budget`` tokens by :meth:`score` (ties: lower index first)."""
        scores = self.score(ctx)
        kept = topk_indices(scores, self.num_to_keep(ctx))
        return Selection(kept_indices=kept, scores=scores)

    # -- stage 2: pruning inside the language model (optional) -------------------------------------------
    def prune_layers(self, num_layers: int) -> list[int]:
        """Decoder layers before which :meth:`prune` runs (``1..num_layers-1``); none by default."""
        return []

    def decode_cache_start(self, points: list[int]) -> int | None:
        """The first decoder layer whose decode steps attend only to the prompt's columns the last of the pruning
        layers ``points`` kept: after a prefill, the KV caches of the layers from there up to ``points[-1]`` keep
        only those columns (layer 0's never: it is the sequence's clock). ``None`` (default): every layer's cache
        keeps what the layer saw."""
        return None

    def prune(self, ctx: LayerContext) -> torch.Tensor:
        """``[B, L]`` bool: which visual columns survive into ``ctx.layer`` and later layers.

        Text columns are always kept; the value at non-visual columns is ignored. An image whose budget keeps
        every one of its tokens (:meth:`full_budget`) keeps every column: a full budget turns stage 2 off, so
        it is exactly the unpatched model. The other images are decided by :meth:`prune_visual`, the method to
        override (overriding ``prune`` itself opts out of the rule).
        """
        keep = self.prune_visual(ctx)
        full = [image for image, n in enumerate(ctx.tokens_before) if self.full_budget(n, image)]
        if not full or keep.dtype != torch.bool or keep.shape != ctx.image_of.shape:
            return keep  # nothing to add, or a wrong result the caller reports as it is
        for pair in [pair for pair in ctx.recycled if pair[1] in full]:
            del ctx.recycled[pair]  # the image stays as it is: nothing merged into it either
        return keep | torch.isin(ctx.image_of, torch.tensor(full, device=ctx.image_of.device))

    def prune_visual(self, ctx: LayerContext) -> torch.Tensor:
        """``[B, L]`` bool, as :meth:`prune` returns, for the images it leaves to the method; keeps all by default."""
        return ctx.visual

    # -- helpers ---------------------------------------------------------------------------------------
    @classmethod
    def position_ids_for(cls, model_type: str | None) -> str:
        """The default position policy on a model of ``config.model_type`` ``model_type``."""
        default = cls.default_position_ids
        policy = default if isinstance(default, str) else default.get(model_type, "original")
        if policy not in POSITION_POLICIES:
            raise ValueError(
                f"{cls.name}: default_position_ids for {model_type!r} must be one of {POSITION_POLICIES}, "
                f"got {policy!r}"
            )
        return policy

    def num_to_keep(self, ctx: VisualContext) -> int:
        return resolve_budget(self.budget, ctx.num_tokens, ctx.image_index, checked=True)

    def full_budget(self, num_tokens: int, image_index: int = 0) -> bool:
        """Whether ``budget`` keeps every one of the ``num_tokens`` tokens of image ``image_index``."""
        return resolve_budget(self.budget, num_tokens, image_index, checked=True) == num_tokens

    def keep_all(self, ctx: VisualContext, scores: torch.Tensor | None = None) -> Selection:
        """Every token in its original order: what a full budget selects (the adapter then changes nothing)."""
        return Selection(kept_indices=torch.arange(ctx.num_tokens, device=ctx.features.device), scores=scores)

    def hyperparameters(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __str__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{self.name}({params})"


@dataclass
class InLLMMethod(Method):
    """A method that prunes only inside the language model (stage 2): every token goes in, and the image's budget
    is checked against it at selection time, so a budget larger than the image fails before the model runs."""

    def select(self, ctx: VisualContext) -> Selection:
        self.num_to_keep(ctx)
        return self.keep_all(ctx)
