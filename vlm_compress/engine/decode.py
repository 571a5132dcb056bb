"""Decoding after a compressed prefill: the calls without images that follow one, in ``generate`` or a manual loop.

* Inside a compressed ``generate`` without cache, a mask is made explicit so transformers does not read the gapped
  position ids as packed sequences.
* In a manual loop continuing a compressed prefill's cache, default position ids continue the original numbering
  and a mask given in original coordinates is mapped onto the shortened cache.
* ``generate``'s output gets the caller's prompt back at its head.

Room: the engine. May import ``engine.cache_compat``, ``engine.sequence`` and ``engine.state``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .cache_compat import call_cache
from .sequence import prompt_of
from .state import CallStates


def generation_attention_mask(
    model: nn.Module, input_ids: torch.Tensor, call: dict[str, Any]
) -> torch.Tensor:
    """The mask ``generate`` would infer: padding where ``pad_token_id`` occurs (unless it equals EOS)."""
    config = call.get("generation_config") or getattr(model, "generation_config", None)
    pad = call.get("pad_token_id", getattr(config, "pad_token_id", None))
    eos = call.get("eos_token_id", getattr(config, "eos_token_id", None))
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) if eos is not None else set()
    if pad is not None and pad not in eos_ids and bool((input_ids == pad).any()):
        return (input_ids != pad).long()
    return torch.ones_like(input_ids, dtype=torch.long)


def restore_prompt(sequences: torch.Tensor, original_ids: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """Replace the shortened prompt at the head of ``sequences`` by the caller's prompt."""
    repeats = sequences.shape[0] // original_ids.shape[0]
    prompt = original_ids.repeat_interleave(repeats, dim=0) if repeats > 1 else original_ids
    return torch.cat([prompt.to(sequences.device), sequences[:, prompt_length:]], dim=1)


def continue_decoding(call: dict[str, Any], states: CallStates) -> dict[str, Any]:
    """Translate a call without images into the shortened coordinates where needed (see the module docstring)."""
    running = states.current
    if running is not None and running.needs_mask and call.get("attention_mask") is None:
        if call_cache(call) is None:
            ref = prompt_of(call)
            if ref is not None:
                call["attention_mask"] = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
        return call
    cache = call_cache(call)
    state = states.of(cache)
    if state is None or state.continuation is None:
        return call
    continuation = state.continuation
    ref = prompt_of(call)
    if ref is None:
        return call
    query_length = ref.shape[1]
    cache_length = cache.get_seq_length()
    if call.get("position_ids") is None:
        positions = torch.arange(query_length, device=ref.device) + cache_length
        offset = continuation.position_offset
        if isinstance(offset, torch.Tensor):
            offset = offset.to(ref.device).repeat_interleave(ref.shape[0] // offset.shape[0], dim=0)
        call["position_ids"] = (positions.unsqueeze(0) + offset).expand(ref.shape[0], -1)
    mask = call.get("attention_mask")
    generated = cache_length - continuation.new_length
    if mask is not None and mask.shape[1] == continuation.original_length + generated + query_length:
        call["attention_mask"] = torch.cat(
            [
                continuation.attention_mask.to(mask.device, mask.dtype),
                mask[:, continuation.original_length :],
            ],
            dim=1,
        )
    return call
