"""Task name -> :class:`~vlm_compress.eval.tasks.base.Task` class, imported on first use."""

from __future__ import annotations

import importlib

from .base import EvalSample, HubSource, Task

_TASKS: dict[str, str] = {
    "shapes-vqa": "vlm_compress.eval.tasks.shapes:ShapesVQA",
    "shapes-pope": "vlm_compress.eval.tasks.shapes:ShapesPope",
    "pope": "vlm_compress.eval.tasks.pope:Pope",
    "gqa": "vlm_compress.eval.tasks.vqa:GQA",
    "textvqa": "vlm_compress.eval.tasks.vqa:TextVQA",
    "vqav2": "vlm_compress.eval.tasks.vqa:VQAv2",
    "scienceqa-img": "vlm_compress.eval.tasks.scienceqa:ScienceQAImg",
    "mme": "vlm_compress.eval.tasks.mme:MME",
    "mmbench": "vlm_compress.eval.tasks.mmbench:MMBench",
}


def list_tasks() -> list[str]:
    """Names of the evaluation tasks."""
    return list(_TASKS)


def get_task(name: str) -> Task:
    """The task registered as ``name``; unknown names raise with the list of valid ones."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(_TASKS)}")
    module, _, attr = _TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)()


__all__ = ["EvalSample", "HubSource", "Task", "get_task", "list_tasks"]
