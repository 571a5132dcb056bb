"""The demo's functions without a browser: answers, overlays, stats, sweep, and readable errors for bad input."""

from __future__ import annotations

import io
import random

import pytest
import torch
from PIL import Image

import vlm_compress as vlmc
from vlm_compress.cli import build_parser
from vlm_compress.demo import Demo, DemoInputError, load_image
from vlm_compress.zoo.inputs import example_scenes
from vlm_compress.zoo.synthetic import ToyProcessor

from .helpers import hook_state


@pytest.fixture(scope="module")
def demo(tiny_llava):
    demo = Demo(tiny_llava, ToyProcessor(tiny_llava), max_new_tokens=4)
    # transformers installs its output-recording hooks on the vision tower at the first call asking for
    # hidden states and keeps them; warm up so that hook-state comparisons see only ours
    demo.ask(example_scenes()[0], "warm up", "uniform", 16, "")
    return demo


@pytest.fixture(scope="module")
def scene():
    return example_scenes()[0]


def test_ask_answers_with_both_models_and_draws_the_kept_tokens(demo, scene):
    before = hook_state(demo.model)
    outcome = demo.ask(scene, "What colour is the circle?", "uniform", 16, "")
    assert hook_state(demo.model) == before and vlmc.active_handle(demo.model) is None
    assert outcome.full.text and outcome.compressed.text
    assert (outcome.full.visual_tokens, outcome.compressed.visual_tokens) == (144, 16)
    assert outcome.full.positions - outcome.compressed.positions == 128
    assert outcome.compressed.kv_cache_bytes < outcome.full.kv_cache_bytes
    assert outcome.compressed.selection_ms > 0
    assert outcome.overlay.size == outcome.view.size and min(outcome.view.size) >= 336
    assert outcome.heatmap is None  # uniform has no scores
    rows = outcome.stats_rows()
    assert rows[0] == ["visual tokens", "144", "16"] and rows[3][0] == "prefill speedup ×"


def test_full_budget_gives_the_full_answer(demo, scene):
    outcome = demo.ask(scene, "How many shapes?", "uniform", 144, "")
    assert outcome.compressed.text == outcome.full.text


def test_scored_methods_get_a_heat_map_and_merges_are_coloured(demo, scene):
    scored = demo.ask(scene, "What colour?", "cls_attention", 16, "")
    assert scored.heatmap is not None and scored.heatmap.size == scored.view.size
    merged = demo.ask(scene, "What colour?", "tome", 16, demo.default_params("tome"))
    kept_only = demo.ask(scene, "What colour?", "uniform", 16, "")
    # every token of a merged image belongs to a group, so nothing is left dimmed
    assert merged.overlay.tobytes() != kept_only.overlay.tobytes()


def test_method_choices_carry_descriptions_and_defaults_round_trip(demo):
    choices = dict((name, label) for label, name in demo.method_choices())
    assert set(choices) == set(vlmc.list_methods())
    assert choices["uniform"].startswith("uniform — ")
    for name in choices:
        assert isinstance(demo.parse_params(name, demo.default_params(name)), dict)


def test_sweep_returns_a_row_per_budget_and_a_plot(demo, scene):
    rows, plot = demo.sweep(scene, "What colour?", "uniform", "", budgets=[8, 144])
    assert [r[0] for r in rows] == ["8", "144"] and rows[1][2] == "yes"
    assert plot.width > 100 and vlmc.active_handle(demo.model) is None
    assert demo.sweep_budgets()[-1] == 144 and demo.sweep_budgets()[0] >= 1


@pytest.mark.parametrize(
    "question, budget, params, message",
    [
        ("", 16, "", "type a question"),
        ("   ", 16, "", "type a question"),
        ("What?", 0, "", "between 1 and 144"),
        ("What?", 145, "", "between 1 and 144"),
        ("What?", 2.5, "", "whole number"),
        ("What?", "many", "", "number of tokens"),
        ("What?", 16, "nonsense", "key=value"),
        ("What?", 16, "budget=3", "slider"),
        ("What?", 16, "not_a_field=1", "valid hyper-parameters"),
    ],
)
def test_bad_requests_give_readable_messages(demo, scene, question, budget, params, message):
    with pytest.raises(DemoInputError, match=message):
        demo.ask(scene, question, "uniform", budget, params)


def test_bad_files_give_readable_messages(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DemoInputError, match="not an image"):
        load_image(str(text))
    with pytest.raises(DemoInputError, match="empty"):
        load_image(str(empty))
    with pytest.raises(DemoInputError, match="empty"):
        load_image(b"")
    with pytest.raises(DemoInputError, match="upload an image"):
        load_image(None)


def test_huge_images_are_downscaled_with_a_note():
    image, notes = load_image(Image.new("RGB", (5000, 2500), "red"), max_side=1024)
    assert image.size == (1024, 512) and "downscaled" in notes[0]


def test_a_failing_request_leaves_the_model_unpatched(demo, scene, monkeypatch):
    before = hook_state(demo.model)
    calls = []

    def explode(inputs, handle=None):
        calls.append(handle)
        if handle is not None:
            raise RuntimeError("boom inside generate")
        return original(inputs, handle)

    original = demo._generate
    monkeypatch.setattr(demo, "_generate", explode)
    with pytest.raises(RuntimeError, match="boom"):
        demo.ask(scene, "What?", "uniform", 16, "")
    assert len(calls) == 2 and vlmc.active_handle(demo.model) is None
    assert hook_state(demo.model) == before and not demo.lock.locked()


def test_demo_command_parses_its_options():
    args = build_parser().parse_args(["demo", "--model", "tiny", "--port", "0", "--host", "0.0.0.0"])
    assert (args.model, args.port, args.host, args.share) == ("tiny", 0, "0.0.0.0", False)
    assert build_parser().parse_args(["demo"]).model == "shapes"


def test_the_page_builds_with_the_registry_methods(demo):
    gr = pytest.importorskip("gradio")
    from vlm_compress.demo import build

    page = build(demo)
    assert isinstance(page, gr.Blocks)
    dropdown = next(c for c in page.blocks.values() if isinstance(c, gr.Dropdown))
    assert {value for _, value in dropdown.choices} == set(vlmc.list_methods())


def test_prefill_timing_does_not_leak_hooks(demo):
    from vlm_compress.bench import LanguageModelTimer

    with LanguageModelTimer(demo.model) as timer:
        with torch.inference_mode():
            demo.model(**demo._inputs(example_scenes()[1], "Q?"))
    assert len(timer.spans) == 1 and not demo.model.model.language_model._forward_hooks


def test_concurrent_requests_are_served_one_at_a_time(demo, scene):
    from concurrent.futures import ThreadPoolExecutor

    before = hook_state(demo.model)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [
            pool.submit(demo.ask, scene, "What?", method, 16, "") for method in ("uniform", "pool", "random")
        ]
        outcomes = [f.result() for f in futures]
    assert [o.compressed.visual_tokens for o in outcomes] == [16, 16, 16]
    assert hook_state(demo.model) == before and vlmc.active_handle(demo.model) is None


def _corrupt_png(tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(random.Random(0).randbytes(4096))
    return str(path)


def _truncated_png(tmp_path):
    path = tmp_path / "truncated.png"
    buffer = io.BytesIO()
    example_scenes()[0].save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return str(path)


def _text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    return str(path)


@pytest.mark.parametrize("make_file", [_text_file, _corrupt_png, _truncated_png])
def test_ask_on_a_file_that_is_not_an_image_names_the_file(demo, tmp_path, make_file):
    path = make_file(tmp_path)
    name = path.rsplit("/", 1)[-1]
    unreadable = f"'{name}' is (not an image|truncated or corrupt)"
    with pytest.raises(DemoInputError, match=unreadable):
        demo.ask(path, "What?", "uniform", 16, "")
    with pytest.raises(DemoInputError, match=unreadable):
        demo.sweep(path, "What?", "uniform", "", budgets=[8])
    assert vlmc.active_handle(demo.model) is None and not demo.lock.locked()


@pytest.mark.parametrize(
    "make_image, question, message",
    [
        (_text_file, "What?", "'notes.txt' is not an image"),
        (_corrupt_png, "What?", "'corrupt.png' is not an image"),
        (lambda tmp_path: None, "What?", "upload an image"),
        (lambda tmp_path: example_scenes()[0], "", "Please type a question"),
        (lambda tmp_path: example_scenes()[0], "  \n ", "Please type a question"),
    ],
)
def test_the_page_handlers_turn_bad_requests_into_a_message_and_blank_outputs(
    demo, tmp_path, make_image, question, message
):
    from vlm_compress.demo.ui import answer, sweep_budgets

    status, *outputs = answer(demo, make_image(tmp_path), question, "uniform", 16, "")
    assert status.startswith("**Cannot answer:**") and message in status
    assert outputs == ["", "", None, None, None, []]
    status, rows, plot = sweep_budgets(demo, make_image(tmp_path), question, "uniform", "")
    assert status.startswith("**Cannot sweep:**") and message in status and rows == [] and plot is None
    # the next good request is served as usual
    status, full, compressed, overlay, *_ = answer(demo, example_scenes()[0], "What?", "uniform", 16, "")
    assert status.startswith("**Done:**") and "kept 16 of 144" in status and full and compressed and overlay


def test_the_page_handler_reports_an_unexpected_failure_without_raising(demo, scene, monkeypatch):
    from vlm_compress.demo.ui import answer

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(demo, "ask", explode)
    status, *outputs = answer(demo, scene, "What?", "uniform", 16, "")
    assert status == "**Error:** RuntimeError: boom" and outputs == ["", "", None, None, None, []]
