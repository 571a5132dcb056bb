"""Prompts per model family: the instruction each answer style gets and how a question is wrapped for the model.

The instructions are the ones LLaVA-1.5 was evaluated with (its ``scripts/v1_5/eval``): short answers and yes/no
questions end with "Answer the question using a single word or phrase.", multiple choice with "Answer with the
option's letter from the given choices directly.". The wrapping is the model's own chat template when its
processor has one, else the family's conversation format below.
"""

from __future__ import annotations

from typing import Any

INSTRUCTIONS = {
    "short": "Answer the question using a single word or phrase.",
    "yes_no": "Answer the question using a single word or phrase.",
    "multiple_choice": "Answer with the option's letter from the given choices directly.",
    # the bare question: for models trained without an instruction suffix (the embedded ShapesVQA model)
    "plain": "",
}

# config.model_type -> conversation with one image; {text} is the question followed by the instruction
TEMPLATES = {
    "llava": "USER: <image>\n{text} ASSISTANT:",
    "llava_next": "USER: <image>\n{text} ASSISTANT:",
    "qwen2_vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
    ),
}


def question_text(question: str, style: str) -> str:
    """The question followed by the instruction of ``style`` ("short", "yes_no", "multiple_choice", "plain")."""
    if style not in INSTRUCTIONS:
        raise ValueError(f"unknown prompt style {style!r}; valid styles: {', '.join(INSTRUCTIONS)}")
    return f"{question}\n{INSTRUCTIONS[style]}" if INSTRUCTIONS[style] else question


def build_prompt(question: str, style: str, *, model_type: str, processor: Any = None) -> str:
    """The full text prompt (with the model's image placeholder) for one question about one image: the question,
    the instruction of ``style``, wrapped by :func:`conversation`."""
    return conversation(question_text(question, style), model_type=model_type, processor=processor)


def conversation(text: str, *, model_type: str, processor: Any = None) -> str:
    """``text`` as the user turn of a one-image conversation, ready for generation.

    Uses ``processor.apply_chat_template`` when the processor carries a chat template, else
    :data:`TEMPLATES` by ``model_type``; an unknown family without a chat template raises.
    """
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if model_type not in TEMPLATES:
        raise ValueError(
            f"no prompt format for model_type {model_type!r} and its processor has no chat template; "
            f"known families: {', '.join(TEMPLATES)}"
        )
    return TEMPLATES[model_type].format(text=text)
