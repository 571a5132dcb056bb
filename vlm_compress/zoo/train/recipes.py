"""How each training stage is set up: which weights it trains (:func:`_trainable`), its learning-rate schedule
(``_learning_rate``: warm-up, then cosine) and the sharpened attention init of the answering stage
(:func:`sharpen_attention_init`).

Small functions of a model and numbers; they hold no state and draw no data.

May import: the standard library and torch; no other training room.
"""

from __future__ import annotations

import math

import torch


def _learning_rate(peak: float, floor: float, warmup: int, total: int, step: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``floor`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def sharpen_attention_init(model, scale: float) -> None:
    """Multiply the language model's initial query and key projections by ``scale``.

    With the default init (std 0.02) every answer token attends almost uniformly to the ~590 prompt positions, so
    the one object that answers a question contributes ~1% of the attention output, and training sat on the
    question-prior solution (answers independent of the image). Larger initial logits make attention uneven from
    the start, and the heads that happen to favour object tokens get a gradient strong enough to learn the look-up.
    """
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(scale)
            layer.self_attn.k_proj.weight.mul_(scale)


def _trainable(model, stage: str, *, freeze_vision: bool = True) -> list[torch.nn.Parameter]:
    """Stage 1 trains the vision tower; stage 2 freezes it (unless ``freeze_vision=False``: the end-to-end recipe
    without stage 1) and trains the projector and the language model."""
    vision = model.model.vision_tower
    vision.requires_grad_(stage == "vision" or not freeze_vision)
    if stage == "vision":
        return list(vision.parameters())
    if not freeze_vision:
        return list(model.parameters())
    vision_ids = {id(p) for p in vision.parameters()}
    return [p for p in model.parameters() if id(p) not in vision_ids]
