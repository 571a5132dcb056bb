"""Accuracy of a LLaVA on ShapesVQA samples, optionally under a compression method."""

from __future__ import annotations

from collections import defaultdict

import torch

from . import model as zoo_model
from . import shapes


@torch.no_grad()
def predict(model, processor, samples: list[shapes.Sample], *, batch_size: int = 25) -> list[str]:
    """Greedy answers of ``model`` (normalised with :func:`shapes.normalize_answer`), in ``samples`` order."""
    tokenizer = processor.tokenizer
    config = model.config
    image_size = config.vision_config.image_size
    num_image_tokens = (image_size // config.vision_config.patch_size) ** 2
    answers = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        inputs = zoo_model.encode_batch(
            tokenizer, [s.question for s in chunk], num_image_tokens=num_image_tokens
        )
        inputs["pixel_values"] = zoo_model.pixel_values([s.image for s in chunk], image_size)
        output = model.generate(**inputs, **zoo_model.GENERATION_KWARGS)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers += [
            shapes.normalize_answer(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        ]
    return answers


def score(samples: list[shapes.Sample], predictions: list[str]) -> dict[str, float]:
    """Accuracy (%) overall, per family and on questions that hinge on a small object."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for sample, prediction in zip(samples, predictions):
        correct = prediction == shapes.normalize_answer(sample.answer)
        hits["overall"].append(correct)
        hits[sample.family].append(correct)
        if sample.small:
            hits["small"].append(correct)
    order = ["overall", *shapes.FAMILIES, "small"]
    return {key: round(100.0 * sum(hits[key]) / len(hits[key]), 1) for key in order if hits[key]}


def evaluate(
    model,
    processor,
    samples: list[shapes.Sample],
    *,
    method: str | None = None,
    batch_size: int = 25,
    **method_kwargs,
) -> dict:
    """``{"accuracy": score(...), "predictions": [...]}``; with ``method`` the model runs under
    ``vlm_compress.compress(model, method, **method_kwargs)``."""
    if method is None:
        predictions = predict(model, processor, samples, batch_size=batch_size)
    else:
        import vlm_compress as vlmc

        with vlmc.compress(model, method, **method_kwargs):
            predictions = predict(model, processor, samples, batch_size=batch_size)
    return {"accuracy": score(samples, predictions), "predictions": predictions}
