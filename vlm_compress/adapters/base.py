"""The plug every adapter is: the questions the engine asks about one model family.

An adapter knows one model family and nothing about methods or the engine's bookkeeping. It answers:

* where the image tokens are (:meth:`Adapter.image_token_mask`, :attr:`Adapter.image_inputs`);
* how the images are encoded and which signals a method can read (:meth:`Adapter.encode`,
  :meth:`Adapter.available_signals`);
* how kept features are laid out and packed back (:meth:`Adapter.kept_layout`,
  :meth:`Adapter.non_visual_positions`, :meth:`Adapter.pack_features`);
* how positions are computed (:meth:`Adapter.default_positions`, :meth:`Adapter.rewrite_positions`,
  :meth:`Adapter.decode_offset`).

The engine (:mod:`vlm_compress.engine`) runs the call, the method, the rewrite and the decoding around these
answers. An adapter gets the model, an :class:`~vlm_compress.engine.undo.UndoRecorder` for any change it must
make to the instance, and the patch's options; never the handle.

Room: adapters. May import ``views``, ``errors`` and the engine's data types and helpers
(``engine.sequence``, ``engine.signals``, ``engine.options``, ``engine.undo``); never a method, ``patching`` or ``registry``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..engine.options import PatchOptions
from ..engine.sequence import ImageSlot, SequencePlan, call_length, gather_positions, text_positions
from ..engine.undo import UndoRecorder
from ..errors import InvalidFeaturesError
from ..views import Signals, TokenRegion, VisualContext


class Adapter:
    """Base adapter. Subclasses implement :meth:`encode` and :meth:`pack_features`, set ``image_token_id`` (or
    override :meth:`image_token_mask`) and build each image's context with :meth:`image_context`."""

    #: per-token keyword inputs (besides ids/embeds/mask/positions/labels) that must be gathered with the sequence
    per_token_inputs: ClassVar[tuple[str, ...]] = ("token_type_ids",)
    #: keyword inputs that carry images; a call with none of them set is passed through untouched
    image_inputs: ClassVar[tuple[str, ...]] = ("pixel_values",)
    #: keyword inputs a rewritten call must drop (the model would recompute positions for the full length)
    stale_after_rewrite: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, undo: UndoRecorder, options: PatchOptions):
        self.model = model
        self.config = model.config
        self.undo = undo
        self.position_ids = options.position_ids
        self.tokenizer = options.tokenizer
        self.image_processor = options.image_processor

    @property
    def language_model(self) -> nn.Module:
        """The decoder stack (a ``*Model`` with ``.layers``) that receives the multimodal sequence."""
        return self.model.model.language_model

    # ------------------------------------------------------------------ image tokens and signals
    def available_signals(self) -> set[str]:
        """Signals this adapter can provide to methods (checked against ``Method.requires`` at patch time)."""
        return set()

    def encode(self, call: dict[str, Any], is_image: torch.Tensor) -> list[ImageSlot]:
        """Run the vision side once; pop the image inputs from ``call``; return one slot per image."""
        raise TypeError(f"{type(self).__name__} must implement encode()")

    def image_token_mask(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None
    ) -> torch.Tensor:
        """``[B, L]`` bool: where the image placeholder tokens are. Default: ``input_ids == image_token_id``, or,
        given only ``inputs_embeds``, the rows equal to that token's embedding."""
        if input_ids is not None:
            return input_ids == self.image_token_id
        image_embed = self.model.get_input_embeddings()(
            torch.tensor(self.image_token_id, device=inputs_embeds.device)
        ).to(inputs_embeds.dtype)
        return (inputs_embeds == image_embed).all(dim=-1)

    def image_context(
        self,
        image: int,
        row: int,
        features: torch.Tensor,
        providers: dict[str, Any],
        *,
        grid: tuple[int, int] | None = None,
        thumbnail: TokenRegion | None = None,
        crops: list[TokenRegion] | None = None,
    ) -> VisualContext:
        """What a method sees of image ``image`` (batch order) in prompt ``row``: its tokens, grid, regions, the
        family's ``model_type`` and its lazy signals (``providers``: name -> zero-argument callable)."""
        return VisualContext(
            features=features,
            grid=grid,
            image_index=image,
            row=row,
            thumbnail=thumbnail,
            crops=crops,
            model_type=self.config.model_type,
            signals=Signals(providers, owner=f"image {image}"),
        )

    @staticmethod
    def check_finite(features: list[torch.Tensor]) -> None:
        bad = [i for i, f in enumerate(features) if not bool(torch.isfinite(f).all())]
        if bad:
            raise InvalidFeaturesError(
                f"visual features of image(s) {bad} contain NaN or inf; check pixel_values and the model's dtype "
                "(fp16 vision towers can overflow: try bf16 or fp32)"
            )

    # ------------------------------------------------------------------ packing kept features back
    def kept_layout(self, slot: ImageSlot) -> tuple[torch.Tensor, torch.Tensor]:
        """The columns an image keeps (in sequence order) and the features placed there (``[K', D]``).

        Default: the selection's kept tokens in the selection's order. Adapters whose placeholder block holds
        more than the method's tokens (LLaVA-NeXT's row newlines) override this.
        """
        selection = slot.selection
        kept = selection.kept_indices
        features = selection.features if selection.features is not None else slot.context.features[kept]
        return slot.columns[kept.to(slot.columns.device)], features

    def non_visual_positions(self, slot: ImageSlot) -> torch.Tensor | None:
        """Positions in the image's placeholder block that in-LLM pruning counts as text (``None``: none)."""
        return None

    def pack_features(self, features: list[torch.Tensor], call: dict[str, Any]) -> None:
        """Put the kept per-image features into ``call`` the way the model's forward accepts pre-encoded images."""
        raise TypeError(f"{type(self).__name__} must implement pack_features()")

    # ------------------------------------------------------------------ positions
    def default_positions(self, call: dict[str, Any], mode: str) -> torch.Tensor:
        """Position ids the unpatched model would use for the whole input (``[B, L]``)."""
        return text_positions(call, mode)

    def rewrite_positions(self, positions: torch.Tensor, plan: SequencePlan) -> torch.Tensor:
        """Gather ``[B, L]`` position ids onto the new columns (or renumber them contiguously)."""
        return gather_positions(positions, plan, self.position_ids)

    def decode_offset(
        self, call: dict[str, Any], plan: SequencePlan, positions: torch.Tensor | None
    ) -> int | torch.Tensor:
        """What a manual decode loop adds to a cache index to get the next position after a compressed prefill:
        the original numbering continues (``0`` when positions were renumbered contiguously)."""
        if self.position_ids == "contiguous":
            return 0
        return call_length(call) - plan.columns.shape[1]
