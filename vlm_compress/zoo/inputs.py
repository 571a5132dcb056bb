"""From an image and a question to the inputs of a loaded model, for any processor: the prompt in the
processor's chat template (:func:`chat_prompt`), the processor's tensors on a device (:func:`prompt_inputs`),
and a few rendered example scenes (:func:`example_scenes`). Shared by ``vlmc run``, ``vlmc bench`` and the demo.

May import torch, PIL and :mod:`vlm_compress.errors`.
"""

from __future__ import annotations

from typing import Any

import torch

# config.model_type -> conversation with one image, for processors without a chat template; {text} is the user turn
TEMPLATES = {
    "llava": "USER: <image>\n{text} ASSISTANT:",
    "llava_next": "USER: <image>\n{text} ASSISTANT:",
    "qwen2_vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
    ),
}


def conversation(text: str, *, processor: Any = None, model_type: str | None = None) -> str:
    """``text`` as the user turn of a one-image conversation, ready for generation: the one prompt builder of
    ``vlmc run``, ``vlmc bench``, ``vlmc eval``, the lmms-eval plugin and the demo.

    Uses ``processor.apply_chat_template`` when the processor carries a chat template, else :data:`TEMPLATES`
    by ``model_type`` (LLaVA-1.5's format when ``model_type`` is not given); an unknown family without a chat
    template raises ``ValueError``.
    """
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    model_type = model_type or "llava"
    if model_type not in TEMPLATES:
        raise ValueError(
            f"no prompt format for model_type {model_type!r} and its processor has no chat template; "
            f"known families: {', '.join(TEMPLATES)}"
        )
    return TEMPLATES[model_type].format(text=text)


def prompt_inputs(
    processor: Any,
    image: Any,
    question: str,
    device: Any = "cpu",
    dtype: Any = None,
    *,
    model_type: str | None = None,
) -> dict:
    """Processor outputs for one image and one question (wrapped by :func:`conversation`), on ``device``
    (floating inputs cast to ``dtype``); ``model_type`` picks the format of a processor without a chat template.

    The prompt template puts the one image placeholder; a question that holds another raises
    :class:`~vlm_compress.errors.InputMismatchError` (the prompt would hold more placeholders than images).
    """
    marker = getattr(processor, "image_token", None) or getattr(processor, "image_marker", None) or "<image>"
    if isinstance(marker, str) and marker in question:
        from ..errors import InputMismatchError

        count = question.count(marker)
        raise InputMismatchError(
            f"the question holds {count} image placeholder(s) {marker!r}, so the prompt would hold {count + 1} "
            f"placeholders for 1 image; the prompt template adds the one placeholder itself: remove {marker!r} "
            "from the question"
        )
    inputs = processor(images=[image], text=[conversation(question, processor=processor, model_type=model_type)], return_tensors="pt")
    out = {}
    for key, value in dict(inputs).items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out


# (shape, colour, centre x, centre y, radius) as fractions of the side; small shapes make pruning matter
_SCENES = [
    [
        ("circle", "red", 0.3, 0.3, 0.15),
        ("square", "blue", 0.7, 0.65, 0.12),
        ("triangle", "green", 0.8, 0.2, 0.05),
    ],
    [("square", "yellow", 0.5, 0.5, 0.25), ("circle", "purple", 0.15, 0.85, 0.06)],
    [
        ("triangle", "orange", 0.25, 0.7, 0.18),
        ("circle", "cyan", 0.75, 0.3, 0.1),
        ("square", "red", 0.9, 0.9, 0.04),
    ],
]


def example_scenes(size: int = 336) -> list[Any]:
    """A few rendered scenes of coloured shapes (deterministic, no download)."""
    from PIL import Image, ImageDraw

    scenes = []
    for shapes in _SCENES:
        image = Image.new("RGB", (size, size), (235, 235, 230))
        draw = ImageDraw.Draw(image)
        for kind, colour, cx, cy, radius in shapes:
            x, y, r = cx * size, cy * size, radius * size
            if kind == "circle":
                draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
            elif kind == "square":
                draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
            else:
                draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
        scenes.append(image)
    return scenes
