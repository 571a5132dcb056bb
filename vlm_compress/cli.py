"""The ``vlmc`` command line.

Each subcommand lives next to the feature it drives and registers itself through ``add_parser(subparsers)``
(modules are imported only to build their parser; heavy imports happen inside the command).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand name -> module exposing add_parser(subparsers)
SUBCOMMANDS = {
    "methods": "vlm_compress.cli",
    "run": "vlm_compress.run",
    "eval": "vlm_compress.eval.cli",
    "demo": "vlm_compress.demo.cli",
    "bench": "vlm_compress.bench.cli",
    "zoo": "vlm_compress.zoo.cli",
}


# Default budgets as fractions of each image's visual tokens, LLaVA-1.5's usual 64 / 128 / 192 of 576: the same
# share on every model (16 / 32 / 48 of the embedded model's 144 tokens).
DEFAULT_BUDGET = 64 / 576
DEFAULT_BUDGETS = "0.111,0.222,0.333,1.0"


def describe_budget(budget: int | float) -> str:
    """``64`` -> ``"64 visual tokens per image"``, ``0.111`` -> ``"11.1% of each image's visual tokens"``."""
    if isinstance(budget, float):
        return f"{100 * budget:.1f}% of each image's visual tokens"
    return f"{budget} visual tokens per image"


def parse_budget(text: str) -> int | float:
    """``"64"`` -> 64 tokens per image, ``"0.25"`` -> a quarter of each image's tokens."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget {text!r} is not a number") from None
    if "." not in text and value.is_integer():
        if value < 1:
            raise argparse.ArgumentTypeError(f"a token budget must be >= 1, got {text}")
        return int(value)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a fractional budget must lie in (0, 1], got {text}")
    return value


def _methods(args: argparse.Namespace) -> int:
    from .registry import describe_methods, method_class

    rows = describe_methods()
    width = max(len(name) for name in rows)
    for name, description in rows.items():
        paper = method_class(name).paper
        suffix = f"  [{paper}]" if paper and args.papers else ""
        print(f"{name:<{width}}  {description}{suffix}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("methods", help="list the registered compression methods")
    parser.add_argument("--papers", action="store_true", help="also print each method's paper link")
    parser.set_defaults(func=_methods)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmc", description="Prune, merge and reorder the visual tokens of vision-language models."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in dict.fromkeys(SUBCOMMANDS.values()):
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
