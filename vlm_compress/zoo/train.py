"""Train the embedded ShapesVQA LLaVA from scratch on a CPU, end to end or in two stages.

The defaults (``vision_steps=0``) reproduce the shipped checkpoint: one stage that trains every weight through
the answers' loss. With ``vision_steps > 0`` training has two stages (see ``docs/zoo.md`` for what each
measured):

**Stage 1, vision pre-training** (``vision_steps``; LLaVA starts from a pre-trained CLIP, we have none): the
vision tower and a linear probe on its patch tokens (the features LLaVA feeds its projector) learn dense
per-patch targets rendered with each scene (:func:`shapes.patch_targets`): colour, shape and size of the
object under the patch, and whether the patch holds an object's centre. The probe is training scaffolding and
is not part of the saved model.

**Stage 2, visual instruction tuning** (``steps``): the vision tower is frozen, as in LLaVA; the projector and
the language model learn to answer, optionally on scenes that grow from one object to nine
(``curriculum_steps``), with sharper initial attention (``attention_init_scale``) and with attention
supervision onto object patches (``attention_supervision``).

Each answering step renders ``images_per_step`` fresh scenes and asks ``questions_per_image`` family-balanced
questions about each. The prompt puts the image before the question, so under causal attention the language
model's states over ``<s> USER: <image> x 576`` do not depend on the question: the step runs that prefix once
per image (vision tower, projector, language model, with its KV cache kept in the autograd graph) and the
questions of that image on top of the cache. The loss is the same as running every (image, question) sequence
on its own; the prefix, which is ~98% of the sequence, is paid once per image instead of once per question.

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

import numpy as np
import torch

from . import model as zoo_model
from . import shapes

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (the defaults reproduce the shipped checkpoint)."""

    seed: int = 0
    steps: int = 200
    vision_steps: int = 0
    vision_images_per_step: int = 16
    vision_learning_rate: float = 2e-3
    centre_weight: float = 3.0
    curriculum_steps: int = 0
    attention_init_scale: float = 1.0
    attention_supervision: float = 0.0
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

    def __post_init__(self):
        problems = [
            f"{name} must be {rule}, got {getattr(self, name)}"
            for name, rule, ok in (
                ("steps", ">= 1", self.steps >= 1),
                ("vision_steps", ">= 0", self.vision_steps >= 0),
                ("curriculum_steps", ">= 0", self.curriculum_steps >= 0),
                ("attention_init_scale", "> 0", self.attention_init_scale > 0),
                ("attention_supervision", ">= 0", self.attention_supervision >= 0),
                ("images_per_step", ">= 1", self.images_per_step >= 1),
                ("vision_images_per_step", ">= 1", self.vision_images_per_step >= 1),
                ("questions_per_image", ">= 1", self.questions_per_image >= 1),
            )
            if not ok
        ]
        if problems:
            raise ValueError("; ".join(problems))


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


def curriculum_max_objects(step: int, curriculum_steps: int) -> int:
    """Most objects a stage-2 scene may hold at ``step``: 1 at first, one more every ``curriculum_steps / 8``
    steps, all :data:`shapes.MAX_OBJECTS` from ``curriculum_steps`` on (0: no curriculum)."""
    if curriculum_steps <= 0 or step >= curriculum_steps:
        return shapes.MAX_OBJECTS
    return 1 + step * (shapes.MAX_OBJECTS - 1) // curriculum_steps


def training_batches(
    seed: int,
    start_step: int,
    images_per_step: int,
    questions_per_image: int,
    image_size: int,
    curriculum_steps: int = 0,
    object_patch_size: int | None = None,
) -> Iterator[tuple]:
    """Batches ``(images, questions per image)`` from step ``start_step`` on; step ``k``'s batch depends only
    on ``(seed, k)``, so a resumed run sees the same data as an uninterrupted one. Scenes hold at most
    :func:`curriculum_max_objects` objects: simple scenes first, as in curriculum learning. With
    ``object_patch_size``, batches are ``(images, questions, object_patches)`` (``[B, grid²]`` bool: patches
    :func:`shapes.patch_targets` puts an object on)."""
    step = start_step
    while True:
        rng = random.Random(f"shapesvqa-train-step:{seed}:{step}")
        images, questions, objects = [], [], []
        index = 0
        most = curriculum_max_objects(step, curriculum_steps)
        while len(images) < images_per_step:
            scene_seed = shapes.train_scene_seed(seed * 1_000_003 + step, index)
            scene = shapes.random_scene(scene_seed, image_size, max_objects=most)
            index += 1
            qas = _questions(scene, rng, questions_per_image)
            if qas:
                images.append(shapes.render_scene(scene))
                questions.append(qas)
                if object_patch_size is not None:
                    objects.append(
                        torch.from_numpy(shapes.patch_targets(scene, object_patch_size)["shape"] > 0)
                    )
        yield (images, questions) if object_patch_size is None else (images, questions, torch.stack(objects))
        step += 1


def _prefix_ids(tokenizer, num_images: int, num_image_tokens: int) -> torch.Tensor:
    prefix = zoo_model.encode_batch(tokenizer, [""], num_image_tokens=num_image_tokens)["input_ids"][0]
    return prefix[:-2].unsqueeze(0).expand(num_images, -1)  # drop "assistant :"


def shared_prefix_loss(
    model,
    tokenizer,
    images,
    questions: list[list[shapes.QA]],
    image_size: int,
    *,
    object_patches: torch.Tensor | None = None,
    attention_weight: float = 0.0,
):
    """Mean cross-entropy of the answers (and ``</s>``) of every question, sharing each image's prefix.

    With ``attention_weight > 0`` and ``object_patches`` (``[images, grid²]`` bool), adds ``attention_weight``
    times the attention-supervision loss: for every layer, ``-log`` of the attention that the position predicting
    the answer puts on the image's object patches, in the head that puts the most there (the other heads stay
    free to read the question). Needs the eager attention implementation (it reads attention probabilities).
    """
    from transformers import DynamicCache

    supervise = attention_weight > 0
    if supervise and (object_patches is None or model.config._attn_implementation != "eager"):
        raise ValueError(
            "attention supervision needs object_patches and a model with attn_implementation='eager' "
            f"(got {model.config._attn_implementation!r})"
        )

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
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        past_key_values=cache,
        labels=labels,
        output_attentions=supervise,
    )
    if not supervise:
        return out.loss
    rows = torch.arange(len(flat))
    asking = (labels != -100).float().argmax(dim=1) - 1  # the position whose next token is the answer
    image_start = cut - num_image_tokens
    on_objects = object_patches.repeat_interleave(counts, dim=0).float()
    aux = 0.0
    for attention in out.attentions:  # [rows, heads, suffix, prefix + suffix]
        on_image = attention[rows, :, asking, image_start:cut]  # [rows, heads, image tokens]
        best_head = (on_image * on_objects[:, None]).sum(dim=-1).amax(dim=1)
        aux = aux - torch.log(best_head + 1e-6).mean()
    return out.loss + attention_weight * aux / len(out.attentions)


def vision_batches(seed: int, start_step: int, images_per_step: int, image_size: int, patch_size: int):
    """Stage-1 batches ``(images, targets)`` from step ``start_step`` on (``targets``: name -> ``[B, grid²]``
    tensor of :func:`shapes.patch_targets`); step ``k``'s batch depends only on ``(seed, k)``."""
    step = start_step
    while True:
        scenes = [
            shapes.random_scene(shapes.train_scene_seed(seed * 1_000_003 + step, -1 - i), image_size)
            for i in range(images_per_step)
        ]
        yield _scene_batch(scenes, patch_size)
        step += 1


def _scene_batch(scenes: list[shapes.Scene], patch_size: int):
    images = [shapes.render_scene(scene) for scene in scenes]
    per_scene = [shapes.patch_targets(scene, patch_size) for scene in scenes]
    targets = {
        name: torch.from_numpy(np.stack([t[name] for t in per_scene])) for name in shapes.PATCH_TARGETS
    }
    return images, targets


class PatchProbe(torch.nn.Module):
    """Linear read-out of every :data:`shapes.PATCH_TARGETS` attribute from the patch tokens LLaVA uses."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict(
            {name: torch.nn.Linear(hidden_size, classes) for name, classes in shapes.PATCH_TARGETS.items()}
        )

    def forward(self, patch_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(patch_tokens) for name, head in self.heads.items()}


def patch_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[B, grid², hidden]``: the vision tower's features that the projector receives (CLS dropped)."""
    config = model.config
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return hidden[config.vision_feature_layer][:, 1:]


def vision_loss(
    model,
    probe: PatchProbe,
    images,
    targets: dict[str, torch.Tensor],
    image_size: int,
    centre_weight: float = 3.0,
):
    """Stage-1 loss: cross-entropy of colour and objectness on every patch, of shape and size on the patches
    that show an object, and of the (rare) centre flag weighted ``centre_weight`` on positives."""
    logits = probe(patch_tokens(model, zoo_model.pixel_values(images, image_size)))
    on_object = targets["shape"] > 0
    ce = torch.nn.functional.cross_entropy
    loss = ce(logits["colour"].flatten(0, 1), targets["colour"].flatten())
    for name in ("shape", "size"):
        loss = loss + ce(logits[name][on_object], targets[name][on_object])
    weight = torch.tensor([1.0, centre_weight])
    return loss + ce(logits["centre"].flatten(0, 1), targets["centre"].flatten(), weight=weight)


@torch.no_grad()
def probe_accuracy(model, probe: PatchProbe, scenes: list[shapes.Scene], image_size: int) -> dict[str, float]:
    """Stage-1 validation (%): colour, shape and size on object patches; centre-flag recall and precision."""
    patch_size = model.config.vision_config.patch_size
    images, targets = _scene_batch(scenes, patch_size)
    logits = probe(patch_tokens(model, zoo_model.pixel_values(images, image_size)))
    guess = {name: value.argmax(-1) for name, value in logits.items()}
    on_object = targets["shape"] > 0
    out = {
        name: (guess[name] == targets[name])[on_object].float().mean() for name in ("colour", "shape", "size")
    }
    centre, flagged = targets["centre"] == 1, guess["centre"] == 1
    out["centre_recall"] = flagged[centre].float().mean()
    out["centre_precision"] = centre[flagged].float().mean() if flagged.any() else torch.tensor(0.0)
    return {name: round(100.0 * value.item(), 1) for name, value in out.items()}


@torch.no_grad()
def answer_accuracy(model, processor, samples: list[shapes.Sample], batch_size: int = 25) -> dict[str, float]:
    """Greedy-decoding accuracy (``generate`` with the checkpoint's settings) overall and per family."""
    from .evaluate import evaluate

    return evaluate(model, processor, samples, batch_size=batch_size)["accuracy"]


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


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False) -> dict:
    """Train (stage 1 for ``vision_steps``, then stage 2 for ``steps``), validate every ``eval_every`` steps of
    each stage, keep the best stage-2 model in ``out_dir/model``; returns the final summary (also written to
    ``out_dir/summary.json``). Steps are counted across both stages; ``last.pt`` resumes either."""
    from tqdm.auto import tqdm

    torch.set_num_threads(config.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = zoo_model.build_processor(config.dims)
    tokenizer = processor.tokenizer
    model = zoo_model.build_model(config.dims, seed=config.seed)
    sharpen_attention_init(model, config.attention_init_scale)
    if config.attention_supervision > 0:
        model.set_attn_implementation("eager")  # attention supervision reads attention probabilities
    probe = PatchProbe(config.dims.vision_hidden)
    image_size, patch_size = config.dims.image_size, config.dims.patch_size
    total = config.vision_steps + config.steps
    start_step, best_accuracy, history = 0, -1.0, []
    last_path = out_dir / "last.pt"
    state = None
    if resume and last_path.exists():
        state = torch.load(last_path, weights_only=False)
        model.load_state_dict(state["model"])
        if "probe" in state:  # absent from single-stage runs' checkpoints
            probe.load_state_dict(state["probe"])
        start_step, best_accuracy, history = state["step"], state["best_accuracy"], state["history"]
        logger.info("resumed from %s at step %d", last_path, start_step)
    val = shapes.load_split("val", config.eval_samples, image_size)
    val_scenes = [sample.scene for sample in val[:32]]
    model.train()
    progress = tqdm(range(start_step, total), initial=start_step, total=total, mininterval=5)
    running, started, stage, optimizer, batches = None, time.time(), None, None, None
    for step in progress:
        wanted = "vision" if step < config.vision_steps else "answers"
        if stage != wanted:
            stage = wanted
            if stage == "vision":
                params = _trainable(model, stage) + list(probe.parameters())
                peak = config.vision_learning_rate
                batches = vision_batches(
                    config.seed, step, config.vision_images_per_step, image_size, patch_size
                )
            else:
                params = _trainable(model, stage, freeze_vision=config.vision_steps > 0)
                peak = config.learning_rate
                batches = training_batches(
                    config.seed,
                    step - config.vision_steps,
                    config.images_per_step,
                    config.questions_per_image,
                    image_size,
                    config.curriculum_steps,
                    patch_size if config.attention_supervision > 0 else None,
                )
            optimizer = torch.optim.AdamW(
                params, lr=peak, weight_decay=config.weight_decay, betas=(0.9, 0.98)
            )
            # checkpoints of single-stage runs carry no "stage": they were answering
            if state is not None and state.get("stage", "answers") == stage:
                optimizer.load_state_dict(state["optimizer"])
            running = None
            progress.set_description(stage)
        stage_step, stage_total = (
            (step, config.vision_steps) if stage == "vision" else (step - config.vision_steps, config.steps)
        )
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(
                peak,
                config.min_learning_rate * peak / config.learning_rate,
                config.warmup_steps,
                stage_total,
                stage_step,
            )
        if stage == "vision":
            images, targets = next(batches)
            loss = vision_loss(model, probe, images, targets, image_size, config.centre_weight)
        else:
            images, questions, *objects = next(batches)
            loss = shared_prefix_loss(
                model,
                tokenizer,
                images,
                questions,
                image_size,
                object_patches=objects[0] if objects else None,
                attention_weight=config.attention_supervision,
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        progress.set_postfix(
            loss=f"{running:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}", refresh=False
        )
        done = step + 1
        if (stage_step + 1) % config.eval_every == 0 or stage_step + 1 == stage_total:
            model.eval()
            if stage == "vision":
                accuracy = probe_accuracy(model, probe, val_scenes, image_size)
            else:
                accuracy = answer_accuracy(model, processor, val)
            model.train()
            history.append(
                {
                    "step": done,
                    "stage": stage,
                    "loss": round(running, 4),
                    "val": accuracy,
                    "minutes": round((time.time() - started) / 60, 1),
                }
            )
            logger.info("step %d (%s) loss %.3f val %s", done, stage, running, json.dumps(accuracy))
            progress.write(f"step {done} ({stage}) loss {running:.3f} val {json.dumps(accuracy)}")
            # ties: keep the later, longer-trained model
            if stage == "answers" and accuracy["overall"] >= best_accuracy:
                best_accuracy = accuracy["overall"]
                model.save_pretrained(out_dir / "model")
                processor.save_pretrained(out_dir / "model")
        if done % config.checkpoint_every == 0 or done == total:
            state_now = {
                "model": model.state_dict(),
                "probe": probe.state_dict(),
                "optimizer": optimizer.state_dict(),
                "stage": stage,
                "step": done,
                "best_accuracy": best_accuracy,
                "history": history,
                "config": repr(config),
            }
            torch.save(state_now, out_dir / "last.tmp")
            (out_dir / "last.tmp").replace(last_path)
    summary = {"best_val_accuracy": best_accuracy, "history": history, "config": repr(config)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
