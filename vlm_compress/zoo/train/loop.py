"""The training loop: :func:`train` runs the vision stage, then the answering stage, validates (read-out and
answer accuracy), saves the best answering model and ``last.pt`` checkpoints, and resumes from them.

May import: every other training room (:mod:`.config`, :mod:`.data`, :mod:`.losses`, :mod:`.recipes`),
:mod:`vlm_compress.zoo.model`, :mod:`vlm_compress.zoo.shapes`, :mod:`vlm_compress.zoo.evaluate` (lazily) and the
device resolution of :mod:`vlm_compress.zoo.loading`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from .. import model as zoo_model
from .. import shapes
from ..loading import resolve_device
from .config import TrainConfig
from .data import _scene_batch, training_batches, vision_batches
from .losses import OBJECT_TARGETS, PatchProbe, guided_loss, patch_tokens, vision_loss
from .recipes import _learning_rate, _trainable, sharpen_attention_init

logger = logging.getLogger(__name__)


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
    from ..evaluate import evaluate

    return evaluate(model, processor, samples, batch_size=batch_size)["accuracy"]


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
