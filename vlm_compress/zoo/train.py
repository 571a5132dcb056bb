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

from ..bench.models import resolve_device
from . import model as zoo_model
from . import shapes
from .guided import OBJECT_TARGETS, Guidance, PatchProbe, guided_loss, patch_tokens, readout_loss

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (the defaults reproduce the shipped checkpoint)."""

    seed: int = 0
    steps: int = 5000
    vision_steps: int = 2500
    vision_images_per_step: int = 32
    vision_learning_rate: float = 3e-3
    freeze_vision: bool = False
    centre_weight: float = 3.0
    curriculum_steps: int = 1500
    attention_init_scale: float = 2.0
    readout_weight: float = 0.5
    question_weight: float = 0.5
    reference_weight: float = 1.0
    deep_weight: float = 1.0
    guided_layers: tuple[int, ...] = (1, 2)
    keep_background: float = 0.25
    dropout_steps: int = 2500
    images_per_step: int = 16
    questions_per_image: int = 12
    learning_rate: float = 2e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_samples: int = 200
    checkpoint_every: int = 25
    threads: int = 2
    device: str = "cpu"
    dims: zoo_model.ModelDims = field(default_factory=zoo_model.ModelDims)

    def __post_init__(self):
        self.guided_layers = tuple(self.guided_layers)
        problems = [
            f"{name} must be {rule}, got {getattr(self, name)}"
            for name, rule, ok in (
                ("steps", ">= 1", self.steps >= 1),
                ("vision_steps", ">= 0", self.vision_steps >= 0),
                ("curriculum_steps", ">= 0", self.curriculum_steps >= 0),
                (
                    "dropout_steps",
                    ">= 0 and < steps (the last steps see every token)",
                    0 <= self.dropout_steps < self.steps,
                ),
                ("attention_init_scale", "> 0", self.attention_init_scale > 0),
                ("readout_weight", ">= 0", self.readout_weight >= 0),
                ("question_weight", ">= 0", self.question_weight >= 0),
                ("reference_weight", ">= 0", self.reference_weight >= 0),
                ("deep_weight", ">= 0", self.deep_weight >= 0),
                ("keep_background", "in (0, 1]", 0 < self.keep_background <= 1),
                ("images_per_step", ">= 1", self.images_per_step >= 1),
                ("vision_images_per_step", ">= 1", self.vision_images_per_step >= 1),
                ("questions_per_image", ">= 1", self.questions_per_image >= 1),
                ("threads", ">= 1", self.threads >= 1),
                (
                    "device",
                    "cpu, cuda, cuda:N or auto",
                    self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"),
                ),
            )
            if not ok
        ]
        if problems:
            raise ValueError("; ".join(problems))

    def guidance(self, stage_step: int) -> Guidance:
        """The scaffolding of answering step ``stage_step``: token dropout annealed linearly from
        ``keep_background`` to all tokens over ``dropout_steps``, then off."""
        keep = 1.0
        if stage_step < self.dropout_steps:
            keep = self.keep_background + (1.0 - self.keep_background) * stage_step / self.dropout_steps
        return Guidance(
            readout_weight=self.readout_weight,
            centre_weight=self.centre_weight,
            question_weight=self.question_weight,
            reference_weight=self.reference_weight,
            guided_layers=self.guided_layers,
            keep_background=keep,
            deep_weight=self.deep_weight,
        )


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
    patch_size: int | None = None,
) -> Iterator[tuple]:
    """Batches ``(images, questions per image)`` from step ``start_step`` on; step ``k``'s batch depends only
    on ``(seed, k)``, so a resumed run sees the same data as an uninterrupted one. Scenes hold at most
    :func:`curriculum_max_objects` objects: simple scenes first, as in curriculum learning. With ``patch_size``,
    batches are ``(images, questions, targets)``: name -> ``[B, grid²]`` tensor of :func:`shapes.patch_targets`
    (with ``owner``)."""
    step = start_step
    while True:
        rng = random.Random(f"shapesvqa-train-step:{seed}:{step}")
        images, questions, scenes = [], [], []
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
                scenes.append(scene)
        yield (
            (images, questions)
            if patch_size is None
            else (images, questions, stack_targets(scenes, patch_size))
        )
        step += 1


def stack_targets(scenes: list[shapes.Scene], patch_size: int) -> dict[str, torch.Tensor]:
    """name -> ``[len(scenes), grid²]`` int64 tensor of :func:`shapes.patch_targets` (``owner`` included)."""
    per_scene = [shapes.patch_targets(scene, patch_size) for scene in scenes]
    return {name: torch.from_numpy(np.stack([t[name] for t in per_scene])) for name in per_scene[0]}


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
    return [shapes.render_scene(scene) for scene in scenes], stack_targets(scenes, patch_size)


def vision_loss(
    model, probe: PatchProbe, images, targets: dict[str, torch.Tensor], image_size: int, centre_weight=3.0
):
    """Stage-1 loss: :func:`guided.readout_loss` of the probe on the vision tower's patch tokens."""
    device = next(model.parameters()).device
    tokens = patch_tokens(model, zoo_model.pixel_values(images, image_size).to(device))
    return readout_loss(probe, tokens, {k: v.to(device) for k, v in targets.items()}, centre_weight)


@torch.no_grad()
def probe_accuracy(model, probe: PatchProbe, scenes: list[shapes.Scene], image_size: int) -> dict[str, float]:
    """Read-out validation (%): every object target on object patches; centre-flag recall and precision."""
    patch_size = model.config.vision_config.patch_size
    device = next(model.parameters()).device
    images, targets = _scene_batch(scenes, patch_size)
    logits = probe(patch_tokens(model, zoo_model.pixel_values(images, image_size).to(device)))
    guess = {name: value.argmax(-1).cpu() for name, value in logits.items()}
    on_object = targets["owner"] > 0
    out = {
        name: (guess[name] == targets[name])[on_object].float().mean() for name in ("colour", *OBJECT_TARGETS)
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
    """Train (stage 1 for ``vision_steps``, then the answering stage for ``steps``), validate every ``eval_every``
    steps of each stage, keep the best answering model in ``out_dir/model``; returns the final summary (also
    written to ``out_dir/summary.json``). Steps are counted across both stages; ``last.pt`` resumes either."""
    from tqdm.auto import tqdm

    torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = zoo_model.build_processor(config.dims)
    tokenizer = processor.tokenizer
    model = zoo_model.build_model(config.dims, seed=config.seed)
    sharpen_attention_init(model, config.attention_init_scale)
    guides_attention = config.question_weight > 0 or config.reference_weight > 0
    if guides_attention:
        model.set_attn_implementation("eager")  # attention guidance reads attention probabilities
    probe = PatchProbe(config.dims.vision_hidden)
    image_size, patch_size = config.dims.image_size, config.dims.patch_size
    total = config.vision_steps + config.steps
    start_step, best_accuracy, history = 0, -1.0, []
    last_path = out_dir / "last.pt"
    state = None
    if resume and last_path.exists():
        state = torch.load(last_path, weights_only=False, map_location="cpu")
        model.load_state_dict(state["model"])
        if "probe" in state:
            probe.load_state_dict(state["probe"])
        start_step, best_accuracy, history = state["step"], state["best_accuracy"], state["history"]
        logger.info("resumed from %s at step %d", last_path, start_step)
    model.to(device)
    probe.to(device)
    val = shapes.load_split("val", config.eval_samples, image_size)
    val_scenes = [sample.scene for sample in val[:32]]
    model.train()
    progress = tqdm(range(start_step, total), initial=start_step, total=total, mininterval=10)
    running, started, stage, optimizer, batches, params = None, time.time(), None, None, None, None
    generator = torch.Generator().manual_seed(config.seed)
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
                params = _trainable(
                    model, stage, freeze_vision=config.freeze_vision and config.vision_steps > 0
                )
                if config.readout_weight > 0:
                    params += list(probe.parameters())
                peak = config.learning_rate
                batches = training_batches(
                    config.seed,
                    step - config.vision_steps,
                    config.images_per_step,
                    config.questions_per_image,
                    image_size,
                    config.curriculum_steps,
                    patch_size,
                )
            optimizer = torch.optim.AdamW(
                params, lr=peak, weight_decay=config.weight_decay, betas=(0.9, 0.98)
            )
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
        parts = {}
        if stage == "vision":
            images, targets = next(batches)
            loss = vision_loss(model, probe, images, targets, image_size, config.centre_weight)
        else:
            images, questions, targets = next(batches)
            # the dropout draws of step k depend only on (seed, k), as the data do
            generator.manual_seed(config.seed * 1_000_003 + step)
            guidance = config.guidance(stage_step)
            loss, parts = guided_loss(
                model,
                tokenizer,
                images,
                questions,
                targets,
                guidance=guidance,
                probe=probe,
                generator=generator,
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        parts["loss"] = loss.item()
        running = (
            parts if running is None else {k: 0.95 * running.get(k, v) + 0.05 * v for k, v in parts.items()}
        )
        progress.set_postfix({k: f"{v:.3f}" for k, v in running.items()}, refresh=False)
        done = step + 1
        if (stage_step + 1) % config.eval_every == 0 or stage_step + 1 == stage_total:
            model.eval()
            if stage == "vision":
                accuracy = probe_accuracy(model, probe, val_scenes, image_size)
            else:
                accuracy = answer_accuracy(model, processor, val)
                if config.readout_weight > 0:
                    accuracy["probe"] = probe_accuracy(model, probe, val_scenes, image_size)
            model.train()
            entry = {
                "step": done,
                "stage": stage,
                "loss": {k: round(v, 4) for k, v in running.items()},
                "val": accuracy,
                "minutes": round((time.time() - started) / 60, 1),
            }
            history.append(entry)
            logger.info("step %d (%s) %s", done, stage, json.dumps(entry))
            progress.write(
                f"step {done} ({stage}) loss {json.dumps(entry['loss'])} val {json.dumps(accuracy)}"
            )
            # ties: keep the later, longer-trained model; only models trained on every token are kept
            full_tokens = stage == "answers" and config.guidance(stage_step).keep_background >= 1.0
            if full_tokens and accuracy["overall"] >= best_accuracy:
                best_accuracy = accuracy["overall"]
                _save(model, processor, out_dir / "model")
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


def _save(model, processor, path: Path) -> None:
    """``save_pretrained`` with the default attention implementation (eager is a training-time choice)."""
    implementation = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    model.set_attn_implementation(implementation)
