"""Prompts per model family: the instruction each answer style gets and how a question is wrapped for the model.

The instructions are the ones LLaVA-1.5 was evaluated with (its ``scripts/v1_5/eval``): short answers and yes/no
questions end with "Answer the question using a single word or phrase.", multiple choice with "Answer with the
option's letter from the given choices directly.". The wrapping is the model's own chat template when its
processor has one, else the family's conversation format (:func:`vlm_compress.zoo.inputs.conversation`, the
one prompt builder, re-exported here).
"""

from __future__ import annotations

from typing import Any

from ..zoo.inputs import TEMPLATES, conversation

__all__ = ["INSTRUCTIONS", "TEMPLATES", "build_prompt", "conversation", "question_text"]

INSTRUCTIONS = {
    "short": "Answer the question using a single word or phrase.",
    "yes_no": "Answer the question using a single word or phrase.",
    "multiple_choice": "Answer with the option's letter from the given choices directly.",
    # the bare question: for models trained without an instruction suffix (the embedded ShapesVQA model)
    "plain": "",
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
