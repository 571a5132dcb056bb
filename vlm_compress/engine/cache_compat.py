"""Where a call or an output keeps its KV cache, across the ``transformers`` releases we support.

Up to 5.23 the cache travels as ``past_key_values``; from 5.24 the forward methods take ``cache`` (the old
keyword still works, with a deprecation warning, until 5.40) and ``generate`` passes ``cache``. A caller's own
decode loop may use either name. Everything in vlm_compress that reads or passes a cache goes through these helpers.

Room: the engine. Imports nothing from vlm_compress (``transformers``' cache layers lazily).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

CACHE_KEYWORDS = ("cache", "past_key_values")


def call_cache(call: Mapping[str, Any]) -> Any:
    """The KV cache passed to a forward call, under whichever keyword the caller used (``None`` if none)."""
    for name in CACHE_KEYWORDS:
        value = call.get(name)
        if value is not None:
            return value
    return None


def output_cache(output: Any) -> Any:
    """The KV cache a model output carries (``None`` if none), read without tripping deprecation warnings.

    A ``ModelOutput`` is a mapping of its set fields, so the field's name of this release is looked up as a key.
    """
    if isinstance(output, Mapping):
        return call_cache(output)
    return getattr(output, "past_key_values", None)


def cache_keyword(module: Any) -> str:
    """The keyword ``module.forward`` takes a KV cache under in this release (``cache`` from 5.24 on)."""
    parameters = inspect.signature(type(module).forward).parameters
    return next((name for name in CACHE_KEYWORDS if name in parameters), "past_key_values")


def take_cache_positions(cache: Any, layer: int, index: Any) -> bool:
    """Keep, in layer ``layer`` of a dynamic ``cache``, only the positions ``index [B, K]`` of each row (in that
    order); ``False`` (and nothing changed) when that layer is not a plain dynamic layer of full keys and values."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    if layers is None or not 0 <= layer < len(layers):
        return False
    entry = layers[layer]
    if type(entry) not in (DynamicLayer, DynamicSlidingWindowLayer) or not entry.is_initialized:
        return False
    index = index.to(entry.keys.device)[:, None, :, None]

    def take(states: Any) -> Any:
        return states.gather(
            2, index.expand(states.shape[0], states.shape[1], index.shape[2], states.shape[3])
        )

    entry.keys, entry.values = take(entry.keys), take(entry.values)
    if isinstance(getattr(entry, "cumulative_length", None), int):  # a sliding layer counts what it holds
        entry.cumulative_length = entry.keys.shape[-2]
    return True


def grows_per_layer(cache: Any) -> bool:
    """Whether every layer of ``cache`` keeps its own, growing length (the dynamic layers), as in-LLM pruning
    needs: its pruned layers hold fewer positions than the layers before them. A static cache does not."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return layers is None or all(isinstance(entry, DynamicLayer) for entry in layers)
