"""What a method returns (:class:`Selection`) and what a patched model records (:class:`Report`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import InvalidFeaturesError

ORDERS = ("original", "selection", "score")
#: position ids of the shortened sequence: the full sequence's ids of the kept tokens, or ``0..L'-1`` renumbered
POSITION_POLICIES = ("original", "contiguous")


@dataclass
class Selection:
    """The visual tokens one image keeps.

    Attributes:
        kept_indices: ``[K]`` indices into the image's ``N`` tokens, in the order the method chose them.
            The adapter places kept tokens in original order unless the method's ``order`` says otherwise.
            For merged tokens, the index is the token whose position the merged token takes.
        features: optional ``[K, D]`` replacement features (merging methods); row ``i`` belongs to
            ``kept_indices[i]``. ``None`` means "use the original features of the kept tokens".
        scores: optional ``[N]`` per-token scores (higher = more important), used by ``order="score"``
            and by the visualisations.
        groups: optional ``[N]`` for merging methods: for every original token, the row of
            ``kept_indices`` it was merged into (``-1``: dropped).
        info: free-form details a method wants to surface in the report (e.g. a solved ratio).
        keep_newlines: AnyRes layouts (LLaVA-NeXT): ``True`` keeps the newline token of every grid row that keeps
            a token; ``False`` drops every newline (MMTok's official layout). Ignored by other models.
        newline_rows: AnyRes layouts: ``[R]`` indices of the grid rows whose newline token survives (the
            method chose them among its candidates, DivPrune); overrides ``keep_newlines``. Ignored elsewhere.
    """

    kept_indices: torch.Tensor
    features: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    groups: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    keep_newlines: bool = True
    newline_rows: torch.Tensor | None = None

    @property
    def num_kept(self) -> int:
        return int(self.kept_indices.numel())

    def validate(self, num_tokens: int, dim: int, *, method: str = "method") -> None:
        """Raise a clear error when the selection cannot be spliced into an image of ``num_tokens`` tokens."""
        kept = self.kept_indices
        if (
            not isinstance(kept, torch.Tensor)
            or kept.dtype not in (torch.int64, torch.int32)
            or kept.ndim != 1
        ):
            raise InvalidFeaturesError(
                f"{method}: kept_indices must be a 1-D integer tensor, got {kept!r:.80}"
            )
        if kept.numel() == 0:
            raise InvalidFeaturesError(f"{method}: kept no token; every image must keep at least one")
        if int(kept.min()) < 0 or int(kept.max()) >= num_tokens:
            raise InvalidFeaturesError(
                f"{method}: kept_indices must lie in [0, {num_tokens}), got range "
                f"[{int(kept.min())}, {int(kept.max())}]"
            )
        if torch.unique(kept).numel() != kept.numel():
            raise InvalidFeaturesError(f"{method}: kept_indices contains duplicates")
        if self.features is not None and tuple(self.features.shape) != (kept.numel(), dim):
            raise InvalidFeaturesError(
                f"{method}: merged features must have shape [{kept.numel()}, {dim}], got {tuple(self.features.shape)}"
            )
        if self.scores is not None and tuple(self.scores.shape) != (num_tokens,):
            raise InvalidFeaturesError(
                f"{method}: scores must have shape [{num_tokens}], got {tuple(self.scores.shape)}"
            )
        if self.groups is not None and tuple(self.groups.shape) != (num_tokens,):
            raise InvalidFeaturesError(
                f"{method}: groups must have shape [{num_tokens}], got {tuple(self.groups.shape)}"
            )

    def ordered(self, order: str) -> Selection:
        """The same selection with ``kept_indices`` (and aligned rows) arranged by ``order``.

        ``"original"``: ascending token index; ``"selection"``: as the method chose them; ``"score"``: by
        descending score (ties: lower index first).
        """
        if order == "selection":
            return self
        if order == "original":
            permutation = torch.argsort(self.kept_indices, stable=True)
        elif order == "score":
            if self.scores is None:
                raise ValueError(
                    "order='score' needs per-token scores, and this method returns none; "
                    "use order='original' or order='selection'"
                )
            kept_scores = self.scores.to(torch.float32)[self.kept_indices]
            # stable sort on ascending index first so that equal scores keep the lower index first
            by_index = torch.argsort(self.kept_indices, stable=True)
            permutation = by_index[torch.argsort(kept_scores[by_index], descending=True, stable=True)]
        else:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        groups = self.groups
        if groups is not None:
            # groups point at rows of kept_indices: renumber them to the new row order
            new_row = torch.empty_like(permutation)
            new_row[permutation] = torch.arange(permutation.numel(), device=permutation.device)
            groups = torch.where(groups >= 0, new_row[groups.clamp(min=0)], groups)
        return Selection(
            kept_indices=self.kept_indices[permutation],
            features=None if self.features is None else self.features[permutation],
            scores=self.scores,
            groups=groups,
            info=dict(self.info),
            keep_newlines=self.keep_newlines,
            newline_rows=self.newline_rows,
        )

    def kept_mask(self, num_tokens: int) -> torch.Tensor:
        """``[N]`` bool mask of the tokens whose position survives."""
        mask = torch.zeros(num_tokens, dtype=torch.bool, device=self.kept_indices.device)
        mask[self.kept_indices] = True
        return mask


@dataclass
class ImageRecord:
    """One image of one patched call."""

    call: int
    row: int
    image: int
    method: str
    tokens_before: int
    tokens_after: int
    kept_indices: list[int]
    selection_ms: float
    grid: tuple[int, int] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    selection: Selection | None = field(default=None, repr=False)
    #: AnyRes images (LLaVA-NeXT): the thumbnail region, then the crops (``TokenRegion``s), for per-crop pictures
    regions: list[Any] | None = field(default=None, repr=False)

    @property
    def ratio(self) -> float:
        return self.tokens_after / self.tokens_before


@dataclass
class CallRecord:
    """One patched ``forward`` or ``generate`` call.

    ``original_positions[b, j]`` is the column of the caller's input that column ``j`` of the shortened
    language-model input came from (``-1`` for padding the adapter added), so ``logits[b, j]`` of a patched
    forward belongs to ``input_ids[b, original_positions[b, j]]``.
    """

    call: int
    kind: str
    positions_before: list[int]
    positions_after: list[int]
    original_positions: torch.Tensor
    layer_positions: dict[int, list[int]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return sum(self.positions_after) / max(1, sum(self.positions_before))


class Report:
    """Everything a patched model recorded while the handle was active.

    ``images``: one :class:`ImageRecord` per image and call; ``calls``: one :class:`CallRecord` per call;
    ``position_ids``: the position policy in effect (``"original"`` or ``"contiguous"``) and
    ``position_ids_source``: where it came from (the method's default for the model family, or the caller).
    """

    def __init__(self, position_ids: str = "original", position_ids_source: str = "") -> None:
        self.images: list[ImageRecord] = []
        self.calls: list[CallRecord] = []
        self.position_ids = position_ids
        self.position_ids_source = position_ids_source

    def __len__(self) -> int:
        return len(self.images)

    def clear(self) -> None:
        self.images.clear()
        self.calls.clear()

    @property
    def tokens_before(self) -> int:
        return sum(r.tokens_before for r in self.images)

    @property
    def tokens_after(self) -> int:
        return sum(r.tokens_after for r in self.images)

    @property
    def selection_ms(self) -> float:
        return sum(r.selection_ms for r in self.images)

    def last_call(self) -> CallRecord | None:
        return self.calls[-1] if self.calls else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "position_ids": self.position_ids,
            "position_ids_source": self.position_ids_source,
            "images": [
                {
                    "call": r.call,
                    "row": r.row,
                    "image": r.image,
                    "method": r.method,
                    "tokens_before": r.tokens_before,
                    "tokens_after": r.tokens_after,
                    "kept_indices": r.kept_indices,
                    "selection_ms": round(r.selection_ms, 3),
                    "info": {k: v for k, v in r.info.items() if isinstance(v, (int, float, str, bool, list))},
                }
                for r in self.images
            ],
            "calls": [
                {
                    "call": c.call,
                    "kind": c.kind,
                    "positions_before": c.positions_before,
                    "positions_after": c.positions_after,
                    "layer_positions": {str(k): v for k, v in c.layer_positions.items()},
                }
                for c in self.calls
            ],
        }

    def __str__(self) -> str:
        positions = f"position ids: {self.position_ids}" + (
            f" ({self.position_ids_source})" if self.position_ids_source else ""
        )
        if not self.images:
            return f"Report: no image was compressed; {positions}"
        lines = [
            positions,
            f"{'call':>4} {'row':>3} {'img':>3}  {'method':<14} {'before':>6} {'after':>6} {'kept %':>6} {'select ms':>9}",
        ]
        for r in self.images:
            lines.append(
                f"{r.call:>4} {r.row:>3} {r.image:>3}  {r.method:<14} {r.tokens_before:>6} {r.tokens_after:>6} "
                f"{100 * r.ratio:>5.1f}% {r.selection_ms:>9.2f}"
            )
        for c in self.calls:
            lines.append(
                f"call {c.call} ({c.kind}): language-model positions per row {c.positions_before} -> "
                f"{c.positions_after} ({100 * c.ratio:.1f}%)"
            )
        return "\n".join(lines)

    __repr__ = __str__
