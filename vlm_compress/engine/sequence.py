"""The sequence plan and rewrite: which caller columns the shortened sequence keeps, and the call gathered onto them.

Every row keeps its text tokens (padding removed) and, in place of each image, that image's kept tokens; rows are
re-padded to a common length on the side the caller padded (left by default). ``input_ids``/``inputs_embeds``,
``attention_mask``, ``labels``, position ids and any other per-token inputs are gathered accordingly. When nothing
is dropped or reordered the plan is ``unchanged`` and the caller's tensors are passed on untouched, so a full
budget reproduces the unpatched model exactly.

Room: the engine. May import ``views``, ``selection`` and ``engine.cache_compat``; never an adapter or a method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..selection import Selection
from ..views import VisualContext
from .cache_compat import call_cache


@dataclass
class ImageSlot:
    """One image of a call: where its tokens sit and what the method sees of it."""

    row: int
    columns: torch.Tensor  # [N] columns of the row holding the image's tokens, in token order
    context: VisualContext
    selection: Selection | None = None

    @property
    def start(self) -> int:
        return int(self.columns[0])


@dataclass
class SequencePlan:
    """The shortened sequence: ``columns[b, j]`` is the caller's column at new column ``j`` (``-1``: padding)."""

    columns: torch.Tensor
    attention_mask: torch.Tensor
    features: list[torch.Tensor]
    unchanged: bool
    padding_side: str
    image_of: torch.Tensor  # [B, L'] image index of every visual column, -1 elsewhere
    tokens_before: list[int]  # visual tokens of every image before compression

    def query_columns(self) -> torch.Tensor:
        """``[B]`` column of each row's last real token (the prompt's last token)."""
        width = self.attention_mask.shape[1]
        return width - 1 - torch.argmax(self.attention_mask.flip(dims=[1]).long(), dim=1)


def gather_columns(
    x: torch.Tensor, columns: torch.Tensor, pad_value: Any, *, batch_dim: int = 0
) -> torch.Tensor:
    """Gather per-row columns: ``x [B, L, ...]`` (or ``[P, B, L]`` with ``batch_dim=1``) -> ``[B, L', ...]``.

    ``columns [B, L']`` holds source columns, ``-1`` for padding filled with ``pad_value``.
    """
    rows = torch.arange(columns.shape[0], device=x.device)[:, None]
    index = columns.clamp(min=0).to(x.device)
    pad = (columns < 0).to(x.device)
    if batch_dim == 0:
        out = x[rows, index]
        out[pad] = pad_value
    elif batch_dim == 1:
        out = x[:, rows, index]
        out[:, pad] = pad_value
    else:
        raise ValueError(f"batch_dim must be 0 or 1, got {batch_dim}")
    return out


def gather_marked_rows(
    marked: torch.Tensor, values: torch.Tensor, columns: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Follow a shortening of the sequence with a per-position addition that holds one row per marked column.

    ``marked [B, L]`` bool, ``values [M, D]`` (one row per ``True`` of ``marked``, in row-major order),
    ``columns [B, L']`` (source columns, ``-1``: padding) -> ``marked [B, L']`` and the ``values`` rows of the
    marked columns that ``columns`` keeps, in the same row-major order.
    """
    columns = columns.to(marked.device)
    row_of = (marked.flatten().long().cumsum(0) - 1).reshape(marked.shape)
    kept_marked = gather_columns(marked, columns, False)
    rows = gather_columns(row_of, columns, -1)[kept_marked]
    return kept_marked, values[rows.to(values.device)]


def prompt_of(call: dict[str, Any]) -> torch.Tensor | None:
    """The call's ``input_ids``, else its ``inputs_embeds`` (``None`` when it has neither)."""
    ids = call.get("input_ids")
    return ids if ids is not None else call.get("inputs_embeds")


def call_length(call: dict[str, Any]) -> int:
    return int(prompt_of(call).shape[1])


def is_unchanged(selection: Selection, num_tokens: int) -> bool:
    """Whether a selection keeps every token, in order, with its own features."""
    kept = selection.kept_indices
    return (
        selection.features is None
        and kept.numel() == num_tokens
        and not bool((kept.cpu() != torch.arange(num_tokens)).any())
    )


def plan_sequence(
    slots: list[ImageSlot],
    kept: list[tuple[torch.Tensor, torch.Tensor]],
    attention_mask: torch.Tensor | None,
    batch: int,
    length: int,
    device: torch.device,
) -> SequencePlan:
    """Per row: text columns (padding removed) with each image's block replaced by its kept columns.

    ``kept[i]``: the columns image ``i`` keeps (in sequence order) and the features placed there.
    """
    unchanged = all(is_unchanged(slot.selection, slot.context.num_tokens) for slot in slots)
    features = [kept_features for _, kept_features in kept]
    full_mask = (
        attention_mask.bool().to(device)
        if attention_mask is not None
        else torch.ones(batch, length, dtype=torch.bool, device=device)
    )
    image_of = torch.full((batch, length), -1, dtype=torch.long, device=device)
    for slot in slots:
        image_of[slot.row, slot.columns.to(device)] = slot.context.image_index
    tokens_before = [slot.context.num_tokens for slot in slots]
    if unchanged:
        columns = torch.arange(length, device=device).expand(batch, length)
        return SequencePlan(columns, full_mask.long(), features, True, "left", image_of, tokens_before)
    right_padded = (
        attention_mask is not None and bool((~full_mask[:, -1]).any()) and bool(full_mask[:, 0].all())
    )
    side = "right" if right_padded else "left"
    rows = []
    for b in range(batch):
        row_slots = [(s, c) for s, (c, _) in zip(slots, kept) if s.row == b]
        is_image = torch.zeros(length, dtype=torch.bool, device=device)
        for s, _ in row_slots:
            is_image[s.columns.to(device)] = True
        text = torch.nonzero(full_mask[b] & ~is_image).flatten()
        keys = [text]
        pieces = [text]
        for s, slot_columns in row_slots:
            slot_columns = slot_columns.to(device)
            pieces.append(slot_columns)
            keys.append(torch.full_like(slot_columns, s.start))
        key = torch.cat(keys)
        order = torch.sort(key, stable=True).indices
        rows.append(torch.cat(pieces)[order])
    new_length = max(r.numel() for r in rows)
    columns = torch.full((batch, new_length), -1, dtype=torch.long, device=device)
    for b, row in enumerate(rows):
        if side == "left":
            columns[b, new_length - row.numel() :] = row
        else:
            columns[b, : row.numel()] = row
    new_mask = gather_columns(full_mask.long(), columns, 0)
    new_image_of = gather_columns(image_of, columns, -1)
    return SequencePlan(columns, new_mask, features, False, side, new_image_of, tokens_before)


def mark_non_visual(plan: SequencePlan, slot: ImageSlot, block_positions: torch.Tensor) -> None:
    """Count the columns at ``block_positions`` of the image's placeholder block as text (``image_of = -1``)."""
    device = plan.columns.device
    columns = slot.columns[block_positions.to(slot.columns.device)].to(device)
    plan.image_of[slot.row, torch.isin(plan.columns[slot.row], columns)] = -1


def text_positions(call: dict[str, Any], mode: str) -> torch.Tensor:
    """``[B, L]`` position ids the unpatched model gives a text sequence (``generate``: from the mask)."""
    ref = prompt_of(call)
    batch, length = ref.shape[:2]
    mask = call.get("attention_mask")
    if mode == "generate" and mask is not None:
        # GenerationMixin._prepare_position_ids_for_generation
        positions = mask.long().cumsum(-1) - 1
        return positions.masked_fill(mask == 0, 0)
    past = call_cache(call)
    offset = past.get_seq_length() if past is not None else 0
    return (torch.arange(length, device=ref.device) + offset).unsqueeze(0).expand(batch, length)


def gather_positions(positions: torch.Tensor, plan: SequencePlan, policy: str) -> torch.Tensor:
    """Gather ``[B, L]`` position ids onto the plan's columns (``policy="original"``), or renumber them
    contiguously from each row's first kept position (``"contiguous"``)."""
    columns = plan.columns
    positions = positions.expand(columns.shape[0], -1) if positions.shape[0] == 1 else positions
    gathered = gather_columns(positions, columns, 0)
    if policy == "original":
        return gathered
    valid = plan.attention_mask.bool()
    first = torch.argmax(valid.long(), dim=1)
    start = gathered[torch.arange(columns.shape[0]), first]
    rank = valid.long().cumsum(dim=1) - 1
    return torch.where(valid, start[:, None] + rank, torch.zeros_like(rank))


def pad_token_id(model: nn.Module) -> int:
    """The id a re-padded column holds: the model's pad token (never the image token), else 0."""
    config = model.config
    candidates = [
        getattr(getattr(config, "text_config", None), "pad_token_id", None),
        getattr(config, "pad_token_id", None),
        getattr(getattr(model, "generation_config", None), "pad_token_id", None),
        0,
    ]
    image_token = getattr(config, "image_token_id", None)
    return next(c for c in candidates if c is not None and c != image_token)


def gather_call(
    call: dict[str, Any], plan: SequencePlan, model: nn.Module, per_token_inputs: tuple[str, ...]
) -> None:
    """Gather every per-token input of ``call`` (in place) onto the plan's columns; positions excluded."""
    columns = plan.columns
    pad_id = pad_token_id(model)
    if call.get("input_ids") is not None:
        call["input_ids"] = gather_columns(call["input_ids"], columns, pad_id)
    if call.get("inputs_embeds") is not None:
        embeds = call["inputs_embeds"]
        pad_embed = model.get_input_embeddings()(torch.tensor(pad_id, device=embeds.device)).to(embeds.dtype)
        call["inputs_embeds"] = gather_columns(embeds, columns, pad_embed)
    call["attention_mask"] = plan.attention_mask
    if call.get("labels") is not None:
        call["labels"] = gather_columns(call["labels"], columns, -100)
    for name in per_token_inputs:
        if call.get(name) is not None:
            call[name] = gather_columns(call[name], columns, 0)
