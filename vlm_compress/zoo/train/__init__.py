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

The package is split by concern; every public name is re-exported here (``from vlm_compress.zoo.train import
TrainConfig, train``):

- :mod:`.config`: :class:`TrainConfig`;
- :mod:`.data`: the per-step batches (:func:`training_batches`, :func:`vision_batches`, the curriculum);
- :mod:`.losses`: :func:`guided_loss` (answers, read-outs, attention guidance, token dropout) with its weights
  :class:`Guidance`, :func:`vision_loss` and :class:`PatchProbe`;
- :mod:`.recipes`: what each stage trains, its learning-rate schedule, the sharpened attention init;
- :mod:`.loop`: :func:`train` (stages, validation, checkpoints, resume).

Imports flow ``losses -> config``, and ``config``, ``data``, ``losses``, ``recipes -> loop``; this ``__init__``
imports the rooms (and re-exports ``resolve_device``, which training uses) and nothing else.
"""

from __future__ import annotations

from ..loading import resolve_device
from .config import TrainConfig
from .data import curriculum_max_objects, stack_targets, training_batches, vision_batches
from .loop import answer_accuracy, probe_accuracy, train
from .losses import (
    OBJECT_TARGETS,
    Guidance,
    PatchProbe,
    guided_loss,
    keep_mask,
    patch_tokens,
    readout_loss,
    reference_masks,
    vision_loss,
)
from .recipes import sharpen_attention_init

__all__ = [
    "OBJECT_TARGETS",
    "Guidance",
    "PatchProbe",
    "TrainConfig",
    "answer_accuracy",
    "curriculum_max_objects",
    "guided_loss",
    "keep_mask",
    "patch_tokens",
    "probe_accuracy",
    "readout_loss",
    "reference_masks",
    "resolve_device",
    "sharpen_attention_init",
    "stack_targets",
    "train",
    "training_batches",
    "vision_batches",
    "vision_loss",
]
