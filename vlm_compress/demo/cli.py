"""``vlmc demo``: serve the Gradio demo on localhost."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..zoo.loading import DEFAULT_MODEL, DTYPES

    parser = subparsers.add_parser("demo", help="serve a Gradio page comparing full and compressed answers")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"checkpoint: {DEFAULT_MODEL!r} (embedded model, default), 'tiny' (random weights), or an HF id/path",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--share", action="store_true", help="open a public Gradio share link (off by default)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="answer length limit (default 12)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from .. import zoo
    from ..zoo.loading import resolve_device
    from .app import Demo
    from .ui import build

    model, processor = zoo.load(args.model, dtype=args.dtype, device=resolve_device(args.device))
    page = build(Demo(model, processor, max_new_tokens=args.max_new_tokens))
    page.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=False)
    return 0
