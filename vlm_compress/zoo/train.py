"""Train the embedded ShapesVQA LLaVA from scratch on a CPU.

Each step renders ``images_per_step`` fresh scenes and asks ``questions_per_image`` family-balanced questions
about each. The prompt puts the image before the question, so under causal attention the language model's
states over ``<s> USER: <image> x 576`` do not depend on the question: the step runs that prefix once per image
(vision tower, projector, language model, with its KV cache kept in the autograd graph) and the questions of
that image on top of the cache. The loss is the same as running every (image, question) sequence on its own;
the prefix, which is ~98% of the sequence, is paid once per image instead of once per question.

Checkpoints: ``DIR/last.pt`` (model, optimiser, step; ``--resume`` continues from it) every
``checkpoint_every`` steps, and ``DIR/model/`` (``save_pretrained`` of model and processor) whenever the
validation accuracy improves.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import model as zoo_model
from . import shapes

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (the defaults reproduce the shipped checkpoint)."""

    seed: int = 0
    steps: int = 200
    images_per_step: int = 8
    questions_per_image: int = 12
    learning_rate: float = 3e-3
    min_learning_rate: float = 2e-4
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_samples: int = 200
    checkpoint_every: int = 10
    threads: int = 2
    dims: zoo_model.ModelDims = field(default_factory=zoo_model.ModelDims)


def _questions(scene: shapes.Scene, rng: random.Random, count: int) -> list[shapes.QA]:
    """``count`` questions about ``scene``, families in turn (``exists`` alternating yes/no), each family's
    answer drawn uniformly from those the scene offers."""
    by_family = {family: shapes.questions_for(scene, rng, (family,)) for family in shapes.FAMILIES}
    offered = [family for family in shapes.FAMILIES if by_family[family]]
    chosen: list[shapes.QA] = []
    seen: set[str] = set()
    for i in range(count * 3):
        if len(chosen) == count or not offered:
            break
        family = offered[i % len(offered)]
        answer = rng.choice(("yes", "no")) if family == "exists" else None
        qa = shapes._pick(by_family[family], family, rng, answer=answer) or shapes._pick(
            by_family[family], family, rng
        )
        if qa.question not in seen:
            seen.add(qa.question)
            chosen.append(qa)
    return chosen


def training_batches(
    seed: int, start_step: int, images_per_step: int, questions_per_image: int, image_size: int
) -> Iterator[tuple[list, list[list[shapes.QA]]]]:
    """Batches ``(images, questions per image)`` from step ``start_step`` on; step ``k``'s batch depends only
    on ``(seed, k)``, so a resumed run sees the same data as an uninterrupted one."""
    step = start_step
    while True:
        rng = random.Random(f"shapesvqa-train-step:{seed}:{step}")
        images, questions = [], []
        index = 0
        while len(images) < images_per_step:
            scene = shapes.random_scene(shapes.train_scene_seed(seed * 1_000_003 + step, index), image_size)
            index += 1
            qas = _questions(scene, rng, questions_per_image)
            if qas:
                images.append(shapes.render_scene(scene))
                questions.append(qas)
        yield images, questions
        step += 1


def _prefix_ids(tokenizer, num_images: int, num_image_tokens: int) -> torch.Tensor:
    prefix = zoo_model.encode_batch(tokenizer, [""], num_image_tokens=num_image_tokens)["input_ids"][0]
    return prefix[:-2].unsqueeze(0).expand(num_images, -1)  # drop "assistant :"


def shared_prefix_loss(model, tokenizer, images, questions: list[list[shapes.QA]], image_size: int):
    """Mean cross-entropy of the answers (and ``</s>``) of every question, sharing each image's prefix."""
    from transformers import DynamicCache

    config = model.config
    num_image_tokens = (image_size // config.vision_config.patch_size) ** 2
    pixel_values = zoo_model.pixel_values(images, image_size)
    prefix_ids = _prefix_ids(tokenizer, len(images), num_image_tokens)
    prefix_out = model(input_ids=prefix_ids, pixel_values=pixel_values, use_cache=True)
    counts = torch.tensor([len(qas) for qas in questions])
    cache = DynamicCache(config=config.text_config)
    for layer_idx, layer in enumerate(prefix_out.past_key_values.layers):
        cache.update(
            layer.keys.repeat_interleave(counts, dim=0),
            layer.values.repeat_interleave(counts, dim=0),
            layer_idx,
        )
    flat = [qa for qas in questions for qa in qas]
    # the question part of each row: "question assistant : answer </s>", right-padded
    batch = zoo_model.encode_batch(
        tokenizer, [qa.question for qa in flat], [qa.answer for qa in flat], num_image_tokens=num_image_tokens
    )
    cut = prefix_ids.shape[1]
    input_ids, labels = batch["input_ids"][:, cut:], batch["labels"][:, cut:]
    attention_mask = torch.cat(
        [torch.ones(len(flat), cut, dtype=torch.long), batch["attention_mask"][:, cut:]], dim=1
    )
    out = model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, labels=labels)
    return out.loss


@torch.no_grad()
def answer_accuracy(model, processor, samples: list[shapes.Sample], batch_size: int = 25) -> dict[str, float]:
    """Greedy-decoding accuracy (``generate`` with the checkpoint's settings) overall and per family."""
    from .evaluate import evaluate

    return evaluate(model, processor, samples, batch_size=batch_size)["accuracy"]


def _learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.min_learning_rate + (config.learning_rate - config.min_learning_rate) * cosine


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False) -> dict:
    """Train, validate every ``eval_every`` steps, keep the best model in ``out_dir/model``; returns the
    final summary (also written to ``out_dir/summary.json``)."""
    from tqdm.auto import tqdm

    torch.set_num_threads(config.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = zoo_model.build_processor(config.dims)
    tokenizer = processor.tokenizer
    model = zoo_model.build_model(config.dims, seed=config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )
    start_step, best_accuracy, history = 0, -1.0, []
    last_path = out_dir / "last.pt"
    if resume and last_path.exists():
        state = torch.load(last_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, best_accuracy, history = state["step"], state["best_accuracy"], state["history"]
        logger.info("resumed from %s at step %d", last_path, start_step)
    val = shapes.load_split("val", config.eval_samples, config.dims.image_size)
    batches = training_batches(
        config.seed, start_step, config.images_per_step, config.questions_per_image, config.dims.image_size
    )
    model.train()
    progress = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, mininterval=5)
    running, started = None, time.time()
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        images, questions = next(batches)
        loss = shared_prefix_loss(model, tokenizer, images, questions, config.dims.image_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        progress.set_postfix(loss=f"{running:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            model.eval()
            accuracy = answer_accuracy(model, processor, val)
            model.train()
            history.append(
                {
                    "step": done,
                    "loss": round(running, 4),
                    "val": accuracy,
                    "minutes": round((time.time() - started) / 60, 1),
                }
            )
            logger.info("step %d loss %.3f val %s", done, running, json.dumps(accuracy))
            progress.write(f"step {done} loss {running:.3f} val {json.dumps(accuracy)}")
            if accuracy["overall"] >= best_accuracy:  # ties: keep the later, longer-trained model
                best_accuracy = accuracy["overall"]
                model.save_pretrained(out_dir / "model")
                processor.save_pretrained(out_dir / "model")
        if done % config.checkpoint_every == 0 or done == config.steps:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": done,
                "best_accuracy": best_accuracy,
                "history": history,
                "config": repr(config),
            }
            torch.save(state, out_dir / "last.tmp")
            (out_dir / "last.tmp").replace(last_path)
    summary = {"best_val_accuracy": best_accuracy, "history": history, "config": repr(config)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
