"""Accuracy and evaluation wall time per (method, budget) in one run: what a budget buys end to end.

    python benchmarks/eval_sweep.py --model shapes --task shapes-vqa --limit 200 --methods uniform,random \\
        --budgets 64,192

Prints one row per setting: the task's headline metric, its share of the uncompressed model's, the visual tokens
kept per image, the seconds the setting took (batched greedy generation, no prediction cache) and the speed-up
over the uncompressed run measured in the same process. Answers of different lengths take different times, so
compare speed on a trained model (a random-weight one stops at arbitrary lengths).
"""

from __future__ import annotations

import argparse
import time

from vlm_compress import zoo
from vlm_compress.cli import parse_budget
from vlm_compress.eval import FULL, Setting, get_task
from vlm_compress.eval.runner import predict, score_setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--task", default="shapes-vqa")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--methods", default="uniform,random")
    parser.add_argument("--budgets", default="64,192")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    task = get_task(args.task)
    samples = task.load(args.data_dir, args.limit)
    model, processor = zoo.load(args.model)
    settings = [Setting(FULL)] + [
        Setting(method, parse_budget(budget))
        for method in args.methods.split(",")
        for budget in args.budgets.split(",")
    ]
    print(f"{task.name}, {len(samples)} samples, model {args.model}, batch size {args.batch_size}")
    print(f"{'setting':<18} {task.primary_metric:>10} {'rel.':>6} {'tokens':>7} {'seconds':>8} {'speed-up':>8}")
    # one untimed batch first: the first call pays for lazy initialisation
    predict(model, processor, task, samples[: args.batch_size], Setting(FULL), batch_size=args.batch_size,
            progress=False)
    full_primary = full_seconds = None
    for setting in settings:
        start = time.perf_counter()
        rows = predict(model, processor, task, samples, setting, batch_size=args.batch_size, progress=False)
        seconds = time.perf_counter() - start
        result = score_setting(task, samples, setting, rows)
        if setting.method == FULL:
            full_primary, full_seconds = result.primary, seconds
        relative = f"{100 * result.primary / full_primary:5.0f}%" if full_primary else "     -"
        print(f"{setting.key:<18} {result.primary:>10.4f} {relative:>6} {result.tokens_after:>7.1f} "
              f"{seconds:>8.2f} {full_seconds / seconds:>7.2f}x")


if __name__ == "__main__":
    main()
