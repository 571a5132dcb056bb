"""Evaluation: benchmark tasks (:mod:`.tasks`), their metrics (:mod:`.metrics`), the sweep runner
(:mod:`.runner`, sharded with accelerate), reports (:mod:`.report`) and the lmms-eval model class
(:mod:`.lmms_eval_plugin`).

    from vlm_compress.eval import Setting, evaluate, get_task
    task = get_task("shapes-vqa")
    results = evaluate(model, processor, task, task.load(limit=100), [Setting("full"), Setting("uniform", 64)])
"""

from .runner import FULL, EvalResults, Setting, SettingResult, evaluate, predict
from .tasks import EvalSample, Task, get_task, list_tasks

__all__ = [
    "FULL",
    "EvalResults",
    "EvalSample",
    "Setting",
    "SettingResult",
    "Task",
    "evaluate",
    "get_task",
    "list_tasks",
    "predict",
]
