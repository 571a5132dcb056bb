"""``vlmc eval`` (and ``accelerate launch -m vlm_compress.eval``): accuracy against visual-token budget.

Example: ``vlmc eval --task shapes-vqa --methods uniform,random --budgets 0.111,0.222,0.333,1.0 --limit 200``.
Outputs under ``--output-dir`` (default ``vlmc-eval/<task>``): ``predictions/<method>-<budget>.jsonl`` (the
resumable cache), ``results.json``, ``results.csv``, ``results.md`` and ``accuracy_vs_budget.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cli import DEFAULT_BUDGETS, parse_budget
from ..selection import POSITION_POLICIES
from ..zoo.loading import DEFAULT_MODEL

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_method_args(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["tome.layer=2", "random.seed=0"]`` -> ``{"tome": {"layer": 2}, "random": {"seed": 0}}`` (values as JSON
    where they parse, else strings)."""
    parsed: dict[str, dict[str, Any]] = {}
    for item in items:
        name, equals, raw = item.partition("=")
        method, dot, key = name.partition(".")
        if not (equals and dot and method and key):
            raise argparse.ArgumentTypeError(
                f"--method-arg {item!r}: expected METHOD.NAME=VALUE, e.g. tome.layer=2"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        parsed.setdefault(method, {})[key] = value
    return parsed


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--task", default="shapes-vqa", help="task name (see --list-tasks); default shapes-vqa"
    )
    parser.add_argument("--list-tasks", action="store_true", help="print the tasks and exit")
    parser.add_argument("--methods", default="all", help="comma-separated method names, or 'all' (default)")
    parser.add_argument(
        "--budgets",
        default=DEFAULT_BUDGETS,
        help="comma-separated visual tokens per image (or fractions in (0, 1]); default "
        f"{DEFAULT_BUDGETS} (64/128/192 of LLaVA-1.5's 576 tokens, 16/32/48 of the embedded model's 144, and all)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="'shapes' (the embedded model, default) or a checkpoint path / id",
    )
    parser.add_argument("--data-dir", default=None, help="folder with the benchmark's official files")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per generate call (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32", help="model dtype (default float32)")
    parser.add_argument("--output-dir", default=None, help="default vlmc-eval/<task>")
    parser.add_argument(
        "--method-arg",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="extra hyper-parameter for one method, repeatable (e.g. tome.layer=2)",
    )
    parser.add_argument(
        "--position-ids",
        choices=POSITION_POLICIES,
        default=None,
        help="position ids of the kept tokens for every method (default: each method's own, see docs/fidelity.md)",
    )
    parser.add_argument("--no-full", action="store_true", help="skip the uncompressed reference run")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.add_argument(
        "--overwrite", action="store_true", help="discard cached predictions of this output dir"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--export-lmms-eval",
        metavar="DIR",
        default=None,
        help="write the task's samples as an lmms-eval task folder (same scoring) and exit",
    )
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="accuracy of compression methods against token budget on a VQA task",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(parser)


def _settings(args: argparse.Namespace) -> list:
    from ..registry import list_methods
    from ..zoo.settings import FULL, Setting

    methods = list_methods() if args.methods == "all" else _comma_list(args.methods)
    unknown = [m for m in methods if m not in list_methods() and m != FULL]
    if unknown:
        raise SystemExit(
            f"vlmc eval: unknown method(s) {', '.join(unknown)}; valid: {', '.join(list_methods())}"
        )
    try:
        budgets = [parse_budget(b) for b in _comma_list(args.budgets)]
    except argparse.ArgumentTypeError as err:
        raise SystemExit(f"vlmc eval: --budgets: {err}") from None
    if not budgets:
        raise SystemExit("vlmc eval: --budgets is empty")
    settings = [] if args.no_full else [Setting(FULL)]
    settings += [Setting(method, budget) for method in methods if method != FULL for budget in budgets]
    return settings


def _check_run_identity(output_dir: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix cached predictions of a different model, task or generation setup."""
    path = output_dir / "run.json"
    predictions = output_dir / "predictions"
    if overwrite and predictions.is_dir():
        for file in predictions.glob("*.jsonl"):
            file.unlink()
    elif path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != identity:
            changed = sorted(
                k for k in identity.keys() | previous.keys() if identity.get(k) != previous.get(k)
            )
            raise SystemExit(
                f"vlmc eval: {output_dir} holds predictions of another run (differs in {', '.join(changed)}); "
                "pass another --output-dir, or --overwrite to discard them"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    from .report import write_reports
    from .runner import _distributed_state, evaluate
    from .tasks import get_task, list_tasks

    if args.list_tasks:
        for name in list_tasks():
            print(f"{name:<14} {get_task(name).description}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    task = get_task(args.task)
    if args.export_lmms_eval:
        from .lmms_export import export_lmms_task, lmms_task_name

        path = export_lmms_task(task, task.load(args.data_dir, args.limit), args.export_lmms_eval)
        print(
            f"wrote {path}; run: lmms_eval --include_path {path.parent} --tasks {lmms_task_name(task)} "
            "--model vlmc_llava --model_args pretrained=PATH,method=METHOD,budget=N"
        )
        return 0
    settings = _settings(args)
    method_kwargs = parse_method_args(args.method_arg)
    from ..zoo.settings import FULL

    if args.position_ids is not None:  # part of the run identity: a cache of the other policy is not reused
        for setting in settings:
            if setting.method != FULL:
                method_kwargs.setdefault(setting.method, {}).setdefault("position_ids", args.position_ids)
    state = _distributed_state()
    output_dir = Path(args.output_dir or Path("vlmc-eval") / task.name)
    identity = {
        "task": task.name,
        "model": args.model,
        "data_dir": args.data_dir,
        "dtype": args.dtype,
        "max_new_tokens": args.max_new_tokens or task.max_new_tokens,
        "method_args": method_kwargs,
    }
    if state.is_main_process:
        _check_run_identity(output_dir, identity, args.overwrite)
    state.wait_for_everyone()
    samples = task.load(args.data_dir, args.limit)
    from ..zoo import load

    model, processor = load(args.model, dtype=args.dtype, device=state.device)
    from ..errors import VlmcError

    try:
        results = evaluate(
            model,
            processor,
            task,
            samples,
            settings,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            cache_dir=output_dir / "predictions",
            method_kwargs=method_kwargs,
            model_name=Path(args.model).name or args.model,
            progress=not args.quiet,
        )
    except VlmcError as err:
        raise SystemExit(f"vlmc eval: {err}") from err
    if state.is_main_process:
        paths = write_reports(results, output_dir, with_plot=not args.no_plot)
        print(paths["markdown"].read_text(encoding="utf-8"))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m vlm_compress.eval`` (the same options as ``vlmc eval``)."""
    parser = configure(argparse.ArgumentParser(prog="python -m vlm_compress.eval", description=__doc__))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
