"""``vlmc bench``: latency, memory and FLOPs of every method x budget against the full model, in one run."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path

from ..cli import parse_budget

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..zoo.loading import DEFAULT_MODEL, DTYPES
    from ..zoo.synthetic import SYNTHETIC

    parser = subparsers.add_parser(
        "bench",
        help="measure prefill/decode latency, memory and FLOPs of methods against the full model",
        description="Measures every method x budget against the full model in the same run (interleaved rounds, "
        "warm-up, medians) and reports the measured language-model prefill speedup as a fraction of the "
        "theoretical limit from the token counts.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"checkpoint: {DEFAULT_MODEL!r} (embedded model, default), 'tiny' (random smoke test), or an HF id/path",
    )
    source.add_argument(
        "--synthetic",
        choices=sorted(SYNTHETIC),
        help="random weights with the real widths of this model (see --layers)",
    )
    parser.add_argument(
        "--layers", type=int, default=2, help="decoder layers of a --synthetic model (default 2)"
    )
    parser.add_argument(
        "--vision-layers",
        type=int,
        default=24,
        help="vision-tower layers of a --synthetic model (default 24, the real count)",
    )
    parser.add_argument("--methods", default="uniform", help="comma-separated method names (default uniform)")
    parser.add_argument("--budgets", default="64", help="comma-separated budgets: ints (tokens) or fractions")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="measured rounds; figures are medians (default 5)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds first (default 1)")
    parser.add_argument(
        "--new-tokens", type=int, default=16, help="tokens generated per generate call (default 16)"
    )
    parser.add_argument(
        "--text-tokens",
        type=int,
        default=35,
        help="text tokens around the image of a --synthetic prompt (default 35)",
    )
    parser.add_argument(
        "--question", default="What colour is the small shape?", help="question (real models)"
    )
    parser.add_argument("--image", help="image file (default: a bundled example scene)")
    parser.add_argument("--out", help="folder for bench.md, bench.json and bench.csv")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import torch

    from .. import zoo
    from ..zoo import inputs as prompting
    from ..zoo.loading import resolve_device, resolve_dtype
    from ..zoo.settings import Setting
    from . import runner

    dtype = resolve_dtype(args.dtype)
    device = resolve_device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    budgets = [parse_budget(b.strip()) for b in args.budgets.split(",") if b.strip()]
    import vlm_compress as vlmc

    for name in methods:
        vlmc.get_method(name, budget=budgets[0])  # unknown names and bad budgets fail before any loading
    if args.synthetic:
        from ..zoo.synthetic import synthetic_inputs

        model, _ = zoo.load(
            args.synthetic, layers=args.layers, vision_layers=args.vision_layers, dtype=dtype, device=device
        )
        inputs = synthetic_inputs(model, args.text_tokens)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        source = (
            f"synthetic {args.synthetic} ({args.layers} decoder layers, {args.vision_layers} vision layers)"
        )
    else:
        from ..errors import InvalidImageError
        from ..images import load_image

        try:
            image = load_image(args.image) if args.image else prompting.example_scenes()[0]
        except InvalidImageError as err:
            print(f"vlmc bench: --image: {err}", file=sys.stderr)
            return 2
        model, processor = zoo.load(args.model, dtype=dtype, device=device)
        inputs = prompting.prompt_inputs(
            processor, image, args.question, device=device, dtype=dtype, model_type=model.config.model_type
        )
        source = args.model
    settings = [Setting(m, b) for m in methods for b in budgets]
    results = runner.run(
        model, inputs, settings, repeats=args.repeats, warmup=args.warmup, new_tokens=args.new_tokens
    )
    meta = {
        "model": source,
        "dtype": args.dtype,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "new_tokens": args.new_tokens,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    table = runner.to_markdown(results)
    print(f"{source}, {args.dtype} on {meta['device']}; medians of {args.repeats} interleaved rounds")
    print(table)
    noisy = runner.unsteady(results)
    if noisy:
        print(
            f"warning: language-model prefill varied by more than 1.5x between rounds for {', '.join(noisy)} "
            "(a busy machine?); treat the ratios as unreliable and re-run with more --repeats on an idle one"
        )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.md").write_text(table + "\n")
        (out / "bench.csv").write_text(runner.to_csv(results))
        (out / "bench.json").write_text(runner.to_json(results, meta))
        print(f"wrote {out / 'bench.md'}, bench.csv, bench.json")
    logger.debug("meta: %s", json.dumps(meta))
    return 0
