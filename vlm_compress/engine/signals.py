"""Signals that a feature outside the adapters adds to what a method may read (TAP's ``tap_scale_weights``).

An adapter describes each call's encoder pass once (:class:`EncoderPass`); every registered source looks at it
right after the pass (before a later pass overwrites what it reads) and returns a per-image provider, or ``None``
when it has nothing for this call. Adapters thus offer such signals without knowing the feature behind them: the
feature registers its source when it is imported (``vlm_compress.tap`` does).

Room: the engine. Imports nothing from vlm_compress.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn


class EncoderPass(Protocol):
    """One call's run of the vision encoder, as an adapter exposes it to signal sources."""

    vision_tower: nn.Module
    num_passes: int  # encoder passes of the call (images, or thumbnails and crops)
    num_patches: int  # patch tokens per pass (prefix tokens such as [CLS] excluded)

    def per_image(self, image: int, per_pass: torch.Tensor) -> torch.Tensor:
        """``[passes, patches, ...]`` per-pass values -> ``[N, ...]`` over image ``image``'s tokens."""
        ...


#: a source: the call's encoder pass -> ``image -> value``, or ``None`` when it has nothing for this call
SignalSource = Callable[[EncoderPass], Callable[[int], Any] | None]

_SOURCES: dict[str, SignalSource] = {}


def register_signal_source(name: str, source: SignalSource) -> None:
    """Offer signal ``name`` on every adapter that describes its encoder pass; later registrations win."""
    _SOURCES[name] = source


def extension_providers(encoder: EncoderPass) -> dict[str, Callable[[int], Any]]:
    """Name -> per-image provider of every registered source that has something for this encoder pass."""
    providers = {}
    for name, source in _SOURCES.items():
        provider = source(encoder)
        if provider is not None:
            providers[name] = provider
    return providers
