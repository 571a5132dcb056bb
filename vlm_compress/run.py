"""The main job, ``vlmc run``: one image, one question, the full model against every method at one budget.

It answers the question with the unpatched model and with each method, measures the prefill (the forward pass
over the prompt, token selection included) of every variant interleaved in the same run, and saves a PNG that
shows, per method, which visual tokens survived.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .cli import DEFAULT_BUDGET, describe_budget, parse_budget
from .errors import InvalidImageError, VlmcError
from .images import load_image
from .selection import POSITION_POLICIES
from .zoo.settings import FULL


@dataclass
class Row:
    """One line of the table: the full model (``method == "full"``) or one method."""

    method: str
    answer: str = ""
    visual_tokens_before: int = 0
    visual_tokens_after: int = 0
    lm_positions: float = 0.0
    lm_positions_per_layer: list[int] = field(default_factory=list)
    prefill_ms: float = 0.0
    speedup: float = 1.0
    selection_ms: float = 0.0
    lm_flops: float = 1.0
    schedule: str = ""
    #: the position policy in effect (``report.position_ids``): the method's default for the model or the override
    position_ids: str = ""
    error: str | None = None


# ---------------------------------------------------------------------------------------------- loading
def pick_model(spec: str | None, *, device: str = "cpu") -> tuple[Any, Any, str, str | None]:
    """``(model, processor, name, note)`` for ``--model``: ``None`` (the shipped model, else the tiny one) or any
    spec of :func:`vlm_compress.zoo.load`; checkpoints other than the zoo's load in fp16 on a GPU."""
    from . import zoo
    from .zoo.loading import DEFAULT_MODEL, TINY, shipped_model_available

    note = None
    if spec is None:
        if shipped_model_available():
            spec = DEFAULT_MODEL
        else:
            spec = TINY
            note = "the trained default model is not installed; using a random-weight tiny LLaVA (answers are noise)"
    dtype = torch.float16 if device.startswith("cuda") and spec not in (TINY, DEFAULT_MODEL) else torch.float32
    model, processor = zoo.load(spec, dtype=dtype, device=device)
    return model, processor, spec, note


def default_sample() -> tuple[Image.Image, str, str | None, str]:
    """``(image, question, expected answer, where it came from)`` of the bundled sample scene."""
    from . import zoo

    image, question, answer = zoo.load_sample()
    return image, question, answer, str(zoo.SAMPLES_DIR / "scene.png")


# ---------------------------------------------------------------------------------------------- measuring
def _prefill_ms(model: Any, inputs: dict[str, Any], device: str) -> float:
    from .bench import synchronize

    synchronize(device)
    start = time.perf_counter()
    model(**inputs)
    synchronize(device)
    return 1000 * (time.perf_counter() - start)


def _generate(model: Any, processor: Any, inputs: dict[str, Any], max_new_tokens: int) -> str:
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    tokenizer = getattr(processor, "tokenizer", processor)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def run_job(
    model: Any,
    processor: Any,
    image: Image.Image,
    question: str,
    *,
    methods: list[str],
    budget: int | float = DEFAULT_BUDGET,
    repeats: int = 3,
    max_new_tokens: int = 8,
    device: str = "cpu",
    progress: bool = True,
    position_ids: str | None = None,
) -> tuple[list[Row], dict[str, Any]]:
    """Answer with the full model and each method; prefill timings interleaved over ``repeats`` rounds.

    ``position_ids``: ``None`` gives every method its own default for the model (see :func:`vlm_compress.patch`).

    Returns the table rows and, per method, its report's image records (for the picture).
    """
    from tqdm.auto import tqdm

    from . import compress
    from .bench import DecoderShape, prefill_flops
    from .zoo.inputs import prompt_inputs

    inputs = prompt_inputs(processor, image, question, device=device, model_type=model.config.model_type)
    rows = {FULL: Row(method=FULL)}
    records: dict[str, Any] = {}
    with torch.no_grad():
        rows[FULL].answer = _generate(model, processor, inputs, max_new_tokens)
        positions = int(inputs["attention_mask"][0].sum()) if "attention_mask" in inputs else inputs["input_ids"].shape[1]
        rows[FULL].lm_positions = float(positions)
        for name in methods:
            row = rows[name] = Row(method=name)
            try:
                with compress(
                    model, name, budget=budget, processor=processor, position_ids=position_ids
                ) as run:
                    row.position_ids = run.position_ids
                    row.answer = _generate(model, processor, inputs, max_new_tokens)
                    run.report.clear()
                    model(**inputs)
                    _fill(row, run.report)
                    records[name] = list(run.report.images)
            except (VlmcError, ValueError, TypeError) as err:
                row.error = f"{type(err).__name__}: {err}"
        runnable = [FULL] + [name for name in methods if rows[name].error is None]
        times: dict[str, list[float]] = {name: [] for name in runnable}
        model(**inputs)  # warm-up
        steps = tqdm(total=repeats * len(runnable), desc="timing prefill", disable=not progress, leave=False)
        for _ in range(repeats):
            for name in runnable:
                if name == FULL:
                    times[name].append(_prefill_ms(model, inputs, device))
                else:
                    with compress(model, name, budget=budget, processor=processor, position_ids=position_ids):
                        times[name].append(_prefill_ms(model, inputs, device))
                steps.update()
        steps.close()
    full_ms = statistics.median(times[FULL])
    shape = DecoderShape.from_config(model.config.get_text_config())
    layers = shape.layers
    full_flops = prefill_flops(shape, round(rows[FULL].lm_positions), logits=0)
    for name in runnable:
        row = rows[name]
        row.prefill_ms = statistics.median(times[name])
        row.speedup = full_ms / row.prefill_ms
        per_layer = row.lm_positions_per_layer or [round(row.lm_positions)] * layers
        row.lm_flops = prefill_flops(shape, per_layer, logits=0) / full_flops
        row.schedule = schedule(per_layer)
    return list(rows.values()), records


def schedule(per_layer: list[int]) -> str:
    """``[616, 616, 104, 104]`` -> ``"616 -> 104 after layer 2"`` (where an in-LLM method shortens the sequence)."""
    if not per_layer:
        return ""
    steps = [str(per_layer[0])]
    for layer in range(1, len(per_layer)):
        if per_layer[layer] != per_layer[layer - 1]:
            steps.append(f"{per_layer[layer]} after layer {layer}")
    return " -> ".join(steps)


def _fill(row: Row, report: Any) -> None:
    images = report.images
    row.visual_tokens_before = sum(r.tokens_before for r in images)
    row.visual_tokens_after = sum(r.tokens_after for r in images)
    row.selection_ms = sum(r.selection_ms for r in images)
    call = report.last_call()
    if call is None:
        return
    if call.layer_positions:
        per_layer = [call.layer_positions[layer][0] for layer in sorted(call.layer_positions)]
        row.lm_positions_per_layer = per_layer
        row.lm_positions = sum(per_layer) / len(per_layer)
    else:
        row.lm_positions = float(call.positions_after[0])


def save_picture(
    path: Path, image: Image.Image, processor: Any, records: dict[str, Any], rows: list[Row], config: Any
) -> Path | None:
    """Per method, the image as the encoder sees it with kept tokens bright and dropped ones dimmed (the thumbnail
    and every crop for AnyRes models)."""
    from .viz import model_view, panel_grid, record_overlays

    panels = [(FULL, model_view(image, processor))]
    answers = {row.method: row.answer for row in rows}
    for name, images in records.items():
        record = images[0] if images else None
        for title, picture in record_overlays(image, processor, record, config):
            prefix = f"{name}: {record.tokens_after}/{record.tokens_before} -> {answers.get(name, '')!r}"
            panels.append((prefix if title == "kept tokens" else f"{name} {title}", picture))
    if len(panels) == 1:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    panel_grid(panels).save(path)
    return path


def format_table(rows: list[Row]) -> str:
    """The table ``vlmc run`` prints, and a footer that says how far its timings can be trusted."""
    header = (
        f"{'method':<14} {'answer':<12} {'visual tokens':>13} {'position ids':<12} {'LM positions':<26} "
        f"{'LM FLOPs':>8} {'prefill ms':>10} {'speedup':>7}"
    )
    lines = [header, "-" * len(header)]
    slower = []
    for row in rows:
        if row.error is not None:
            lines.append(f"{row.method:<14} skipped: {row.error}")
            continue
        tokens = f"{row.visual_tokens_after}/{row.visual_tokens_before}" if row.method != FULL else "all"
        answer = row.answer if len(row.answer) <= 12 else row.answer[:11] + "…"
        positions = row.schedule or f"{row.lm_positions:.0f}"
        policy = row.position_ids if row.method != FULL else "-"
        lines.append(
            f"{row.method:<14} {answer:<12} {tokens:>13} {policy:<12} {positions:<26} {100 * row.lm_flops:>7.0f}% "
            f"{row.prefill_ms:>10.1f} {row.speedup:>6.2f}x"
        )
        if row.method != FULL and row.speedup < 1.0:
            slower.append(row)
    full = next((row for row in rows if row.method == FULL), None)
    lines += [
        "",
        "position ids: 'original' (kept tokens keep their ids) or 'contiguous' (renumbered 0..L'-1), each method's "
        "official choice for this model unless --position-ids is given.",
        "LM FLOPs: the language model's prefill multiply-adds relative to full, counted from the positions each of "
        "its layers processes (independent of this machine).",
        "prefill ms / speedup: measured here (medians, interleaved), token selection included.",
    ]
    if full is not None and full.prefill_ms < 200:
        lines.append(
            f"The full prefill takes only {full.prefill_ms:.0f} ms on this model, so fixed per-call costs dominate "
            "the timings; for real-width timings run `vlmc bench --synthetic llava-1.5-7b`."
        )
    for row in slower:
        lines.append(
            f"{row.method} is slower than full here: its selection ({row.selection_ms:.1f} ms) and the work of "
            f"shortening the sequence outweigh the {100 * (1 - row.lm_flops):.0f}% of LM FLOPs it saves on a "
            f"{full.prefill_ms if full else 0:.0f} ms prefill."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- command line
def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="answer a question about an image with the full model and with every method (the main job)",
        description=__doc__,
    )
    parser.add_argument("--image", help="image file (default: the bundled sample scene)")
    parser.add_argument("--question", help="question about the image (default: the sample's question)")
    parser.add_argument("--method", action="append", dest="methods", help="method to run (repeatable; default: all)")
    parser.add_argument("--budget", type=parse_budget, default=DEFAULT_BUDGET, help="visual tokens kept per image (int) or a fraction of them (float; default 0.111 = 64/576)")
    parser.add_argument("--model", help="'shapes' (default, shipped), 'tiny' (random weights), a HuggingFace id or a local path")
    parser.add_argument("--out", default="vlmc-run", help="directory for the PNG (default: ./vlmc-run)")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds; the median is reported (default: 3)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--position-ids",
        choices=POSITION_POLICIES,
        help="position ids of the shortened sequence for every method (default: each method's official choice)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from .registry import list_methods

    methods = args.methods or list_methods()
    unknown = [m for m in methods if m not in list_methods()]
    if unknown:
        print(f"vlmc run: unknown method(s) {', '.join(unknown)}; valid: {', '.join(list_methods())}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("vlmc run: --repeats must be >= 1", file=sys.stderr)
        return 2
    image, question, expected, source = default_sample()
    if args.image:
        try:
            image, source, expected = load_image(args.image), args.image, None
        except InvalidImageError as err:
            print(f"vlmc run: --image: {err}", file=sys.stderr)
            return 2
    question = args.question or question
    model, processor, model_name, note = pick_model(args.model, device=args.device)
    if note and not args.json:
        print(f"note: {note}", file=sys.stderr)
    try:
        rows, records = run_job(
            model,
            processor,
            image,
            question,
            methods=methods,
            budget=args.budget,
            repeats=args.repeats,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
            progress=not args.json,
            position_ids=args.position_ids,
        )
    except VlmcError as err:  # bad input for the full model too (a per-method failure only skips its row)
        print(f"vlmc run: {err}", file=sys.stderr)
        return 2
    picture = save_picture(Path(args.out) / "kept_tokens.png", image, processor, records, rows, model.config)
    result = {
        "model": model_name,
        "image": source,
        "question": question,
        "expected": expected,
        "budget": args.budget,
        "position_ids": args.position_ids,
        "device": args.device,
        "note": note,
        "rows": [asdict(row) for row in rows],
        "picture": str(picture) if picture else None,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model: {model_name}   image: {source}\nquestion: {question}" + (f"   (expected: {expected})" if expected else ""))
    print(f"budget: {describe_budget(args.budget)}   device: {args.device}\n")
    print(format_table(rows))
    if picture:
        print(f"\nkept tokens: {picture}")
    return 0
