"""Accuracy of a LLaVA on ShapesVQA samples, optionally under a compression method."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import torch

from . import model as zoo_model
from . import shapes

SWAP_FAMILIES = ("colour", "shape")


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
        inputs = {name: value.to(model.device) for name, value in inputs.items()}
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
    swap: bool = False,
    **method_kwargs,
) -> dict:
    """``{"accuracy": score(...), "predictions": [...]}``; with ``method`` the model runs under
    ``vlm_compress.compress(model, method, **method_kwargs)``. With ``swap=True`` the result also holds
    ``"image_swap"``: the % of colour and shape answers that change when the images are swapped
    (:func:`image_swap`)."""
    import contextlib

    swapped = swapped_images(samples) if swap else None
    if method is None:
        context = contextlib.nullcontext()
    else:
        import vlm_compress as vlmc

        context = vlmc.compress(model, method, **method_kwargs)
    with context:
        predictions = predict(model, processor, samples, batch_size=batch_size)
        swapped_predictions = predict(model, processor, swapped, batch_size=batch_size) if swap else None
    result = {"accuracy": score(samples, predictions), "predictions": predictions}
    if swap:
        result["image_swap"] = image_swap(samples, predictions, swapped_predictions)
    return result


def swapped_images(
    samples: list[shapes.Sample], families: tuple[str, ...] = SWAP_FAMILIES
) -> list[shapes.Sample]:
    """The samples of ``families``, each with the image of the next such sample (the last takes the first's):
    the same questions about other scenes."""
    chosen = [sample for sample in samples if sample.family in families]
    if len(chosen) < 2:
        raise ValueError(
            f"the image-swap check needs at least 2 samples of {', '.join(families)}, got {len(chosen)}"
        )
    return [
        dataclasses.replace(
            sample, image=chosen[(i + 1) % len(chosen)].image, scene=chosen[(i + 1) % len(chosen)].scene
        )
        for i, sample in enumerate(chosen)
    ]


def image_swap(
    samples: list[shapes.Sample],
    predictions: list[str],
    swapped_predictions: list[str],
    families: tuple[str, ...] = SWAP_FAMILIES,
) -> float:
    """% of the answers to ``families`` questions that change when each image is swapped for another scene's
    (``swapped_predictions`` in :func:`swapped_images` order). A model that ignores its image scores 0."""
    own = [p for sample, p in zip(samples, predictions) if sample.family in families]
    if len(own) != len(swapped_predictions):
        raise ValueError(f"got {len(swapped_predictions)} swapped predictions for {len(own)} samples")
    changed = sum(a != b for a, b in zip(own, swapped_predictions))
    return round(100.0 * changed / len(own), 1)
