"""What a training run is asked to do: :class:`TrainConfig`, the hyper-parameters (their defaults are the shipped
recipe), and :meth:`TrainConfig.guidance`, the :class:`~.losses.Guidance` of each answering step.

Plain settings and their validation only; nothing here runs a model or draws data.

May import: the standard library, :mod:`vlm_compress.zoo.model` (for ``ModelDims``) and :mod:`.losses` (for
``Guidance``); not the data, the recipes or the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import model as zoo_model
from .losses import Guidance


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
