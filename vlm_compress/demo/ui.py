"""The Gradio page around :class:`~vlm_compress.demo.app.Demo` (imported lazily: ``pip install vlm-compress[demo]``)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from ..zoo.inputs import example_scenes
from .app import Demo, DemoInputError

logger = logging.getLogger(__name__)

EXAMPLE_QUESTIONS = [
    "What colour is the circle?",
    "How many shapes are there?",
    "Is there a small red square?",
]


def _import_gradio():
    try:
        import gradio as gr
    except ImportError:
        raise ImportError("the demo needs gradio: pip install 'vlm-compress[demo]'") from None
    return gr


def _example_files() -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="vlmc-demo-"))
    paths = []
    for i, scene in enumerate(example_scenes()):
        path = folder / f"scene_{i}.png"
        scene.save(path)
        paths.append(str(path))
    return paths


def _status(kind: str, text: str) -> str:
    return f"**{kind}:** {text}"


def answer(demo: Demo, image: Any, question: str, method: str, budget: float, params: str) -> tuple:
    """The Ask button: ``(status, full answer, compressed answer, overlay, heat map, model view, stats rows)``.

    A bad request gives a ``Cannot answer`` status saying what is wrong and blanks every other output, so no
    earlier answer stays on the page as if it belonged to this request; the server keeps serving.
    """
    blank = ("", "", None, None, None, [])
    try:
        outcome = demo.ask(image, question, method, budget, params)
    except DemoInputError as err:
        return (_status("Cannot answer", str(err)), *blank)
    except Exception as err:
        logger.exception("demo request failed")
        return (_status("Error", f"{type(err).__name__}: {err}"), *blank)
    status = _status(
        "Done",
        f"{method} kept {outcome.compressed.visual_tokens} of {outcome.full.visual_tokens} "
        f"visual tokens; prefill {outcome.speedup:.2f}× faster.",
    )
    if outcome.notes:
        status += "\n\n" + " ".join(outcome.notes)
    return (
        status,
        outcome.full.text,
        outcome.compressed.text,
        outcome.overlay,
        outcome.heatmap,
        outcome.view,
        outcome.stats_rows(),
    )


def sweep_budgets(demo: Demo, image: Any, question: str, method: str, params: str) -> tuple:
    """The Sweep button: ``(status, table rows, plot)``; a bad request gives a ``Cannot sweep`` status."""
    try:
        rows, plot = demo.sweep(image, question, method, params)
    except DemoInputError as err:
        return _status("Cannot sweep", str(err)), [], None
    except Exception as err:
        logger.exception("demo sweep failed")
        return _status("Error", f"{type(err).__name__}: {err}"), [], None
    return _status("Sweep done", f"{len(rows)} budgets"), rows, plot


def build(demo: Demo, *, title: str = "vlm_compress demo"):
    """A ``gr.Blocks`` page: upload or pick a scene, ask, compare full and compressed answers."""
    gr = _import_gradio()
    choices = demo.method_choices()
    default_method = "uniform" if any(name == "uniform" for _, name in choices) else choices[0][1]
    default_budget = min(demo.num_visual_tokens, max(1, demo.num_visual_tokens // 9))

    # no per-user state lives here or in Demo: every request carries its own inputs (Gradio keeps each
    # browser session's component values apart), and the shared model is guarded by Demo.lock
    def ask(image: Any, question: str, method: str, budget: float, params: str):
        return answer(demo, image, question, method, budget, params)

    def sweep(image: Any, question: str, method: str, params: str):
        return sweep_budgets(demo, image, question, method, params)

    with gr.Blocks(title=title) as page:
        gr.Markdown(
            f"# {title}\nAsk a question about an image; the full model and the compressed one answer side by side. "
            f"The model sees **{demo.num_visual_tokens}** visual tokens per image."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.File(label="Image (PNG, JPEG, ...)", file_count="single", elem_id="image-upload")
                question = gr.Textbox(label="Question", value=EXAMPLE_QUESTIONS[0], elem_id="question")
                method = gr.Dropdown(choices=choices, value=default_method, label="Method", elem_id="method")
                budget = gr.Slider(
                    1,
                    demo.num_visual_tokens,
                    value=default_budget,
                    step=1,
                    label="Budget (visual tokens kept)",
                    elem_id="budget",
                )
                params = gr.Textbox(
                    label="Hyper-parameters (key=value, ...)",
                    value=demo.default_params(default_method),
                    elem_id="params",
                )
                with gr.Row():
                    ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
                    sweep_button = gr.Button("Sweep budgets", elem_id="sweep")
                gr.Examples(
                    examples=[[p, q] for p, q in zip(_example_files(), EXAMPLE_QUESTIONS)],
                    inputs=[image, question],
                    label="Example scenes",
                )
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    full_answer = gr.Textbox(label="Full model", interactive=False, elem_id="full-answer")
                    compressed_answer = gr.Textbox(
                        label="Compressed", interactive=False, elem_id="compressed-answer"
                    )
                with gr.Row():
                    overlay = gr.Image(
                        label="Kept tokens (dropped: dimmed; merged: coloured by group)",
                        type="pil",
                        interactive=False,
                        elem_id="overlay",
                    )
                    heatmap = gr.Image(
                        label="Per-token scores", type="pil", interactive=False, elem_id="heatmap"
                    )
                    view = gr.Image(
                        label="What the model sees", type="pil", interactive=False, elem_id="view"
                    )
                stats = gr.Dataframe(
                    headers=["", "full", "compressed"], label="Stats", interactive=False, elem_id="stats"
                )
                sweep_table = gr.Dataframe(
                    headers=["budget", "answer", "same as full", "prefill ms", "speedup ×"],
                    label="Budget sweep",
                    interactive=False,
                    elem_id="sweep-table",
                )
                sweep_plot = gr.Image(
                    label="Latency vs budget", type="pil", interactive=False, elem_id="sweep-plot"
                )

        method.change(demo.default_params, inputs=method, outputs=params)
        ask_button.click(
            ask,
            inputs=[image, question, method, budget, params],
            outputs=[status, full_answer, compressed_answer, overlay, heatmap, view, stats],
        )
        question.submit(
            ask,
            inputs=[image, question, method, budget, params],
            outputs=[status, full_answer, compressed_answer, overlay, heatmap, view, stats],
        )
        sweep_button.click(
            sweep, inputs=[image, question, method, params], outputs=[status, sweep_table, sweep_plot]
        )
    # one request at a time: the model is shared and gets patched per request
    page.queue(default_concurrency_limit=1, max_size=32)
    return page
