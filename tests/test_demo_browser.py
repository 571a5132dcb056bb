"""The demo driven in headless Chromium: a real Gradio server on a free localhost port, Playwright clicks.

No mocks: the page talks to the real :class:`~vlm_compress.demo.Demo` on a tiny random-weight LLaVA (144 visual
tokens). Every wait is on a selector or a text, never a sleep.
"""

from __future__ import annotations

import random
import re
import shutil
import socket
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from vlm_compress.demo import Demo
from vlm_compress.zoo.inputs import example_scenes
from vlm_compress.zoo.synthetic import ToyProcessor

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 60_000
TOKENS = 144  # the tiny LLaVA's 12×12 grid
DEFAULT_BUDGET = TOKENS // 9  # what the page starts with (ui.build)

# the mean colour of an image shown in the page, read back through a canvas (same origin, so not tainted)
MEAN_RGB_JS = """img => {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    const sums = [0, 0, 0];
    for (let i = 0; i < data.length; i += 4) { sums[0] += data[i]; sums[1] += data[i + 1]; sums[2] += data[i + 2]; }
    return sums.map(s => s / (data.length / 4));
}"""


@dataclass
class Server:
    url: str
    demo: Demo


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_llava):
    pytest.importorskip("gradio", reason="the demo needs gradio: pip install 'vlm-compress[demo]'")
    from vlm_compress.demo import build

    demo = Demo(tiny_llava, ToyProcessor(tiny_llava), max_new_tokens=4)
    page = build(demo)
    port = _free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield Server(f"http://127.0.0.1:{port}", demo)
    page.close()


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if CHROMIUM is None:
        pytest.skip("no chromium executable on PATH (Debian: apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def expect():
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    return expect


def _open(browser, server: Server):
    """A fresh browser context (its own cookies and Gradio session) with the demo loaded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url)
    page.wait_for_selector("#ask")
    return context, page


@pytest.fixture()
def page(browser, server):
    context, page = _open(browser, server)
    yield page
    context.close()


def _solid(path, colour) -> str:
    """A plain-colour picture with a white square: its mean colour tells it apart from another in the page."""
    image = Image.new("RGB", (192, 192), colour)
    image.paste((255, 255, 255), (60, 60, 110, 110))
    image.save(path)
    return str(path)


def _upload(page, path) -> None:
    """Choose ``path`` in the file box, replacing what was there, and wait until the page lists it."""
    clear = page.locator("#image-upload button[aria-label=Clear]")
    if clear.count():
        clear.click()
    page.locator("#image-upload input[type=file]").set_input_files(str(path))
    name = re.sub(r".*/", "", str(path))
    page.wait_for_selector(f"#image-upload td.filename[aria-label='{name}']")


def _set_budget(page, value: int) -> None:
    """Type the budget into the slider's number box, as a user would, and check the range input followed."""
    box = page.locator("#budget input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()
    page.wait_for_function(
        f"() => document.querySelector('#budget input[type=range]').value === '{value}'", timeout=TIMEOUT_MS
    )


def _wait_for_image(page, selector: str) -> None:
    page.wait_for_function(
        f"() => {{ const img = document.querySelector('{selector}'); "
        "return img !== null && img.complete && img.naturalWidth > 0; }"
    )


def _stats(page) -> dict[str, tuple[str, str]]:
    """The stats table as ``{row label: (full, compressed)}``, read from the page's cells."""
    rows = page.locator("#stats .virtual-body [role=row]")
    table = {}
    for i in range(rows.count()):
        cells = [c.strip() for c in rows.nth(i).locator("[role=gridcell]").all_inner_texts()]
        table[cells[0]] = (cells[1], cells[2])
    return table


def _answers(page) -> tuple[str, str]:
    return (
        page.locator("#full-answer textarea").input_value(),
        page.locator("#compressed-answer textarea").input_value(),
    )


def _ask_and_wait_done(page, expect, budget: int) -> None:
    page.locator("#ask").click()
    expect(page.locator("#status")).to_contain_text(f"kept {budget} of {TOKENS} visual tokens")
    page.wait_for_function("() => document.querySelector('#compressed-answer textarea')?.value.length > 0")
    _wait_for_image(page, "#overlay img")


def test_upload_move_the_budget_slider_ask_and_see_answers_overlay_and_stats(page, expect, tmp_path):
    image = tmp_path / "scene.png"
    example_scenes()[2].save(image)
    _upload(page, image)
    page.locator("#question textarea").fill("What colour is the circle?")

    # move the slider with the mouse (click on its track at ~60 %), then one step back with the keyboard
    slider = page.locator("#budget input[type=range]")
    assert slider.input_value() == str(DEFAULT_BUDGET)
    box = slider.bounding_box()
    page.mouse.click(box["x"] + 0.6 * box["width"], box["y"] + box["height"] / 2)
    slider.press("ArrowLeft")
    budget = int(slider.input_value())
    assert 40 < budget < 120 and budget != DEFAULT_BUDGET
    expect(page.locator("#budget input[type=number]")).to_have_value(str(budget))

    _ask_and_wait_done(page, expect, budget)  # the status is the server's: it kept what the slider shows
    full, compressed = _answers(page)
    assert full.strip() and compressed.strip()
    stats = _stats(page)
    assert stats["visual tokens"] == (str(TOKENS), str(budget))
    positions = stats["language-model positions"]
    assert int(positions[0]) - int(positions[1]) == TOKENS - budget  # the language model ran on fewer tokens
    overlay = page.locator("#overlay img")
    expect(overlay).to_be_visible()
    assert overlay.evaluate("img => img.naturalWidth") >= 336
    expect(page.locator("#view img")).to_be_visible()
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_two_browser_sessions_at_once_each_get_their_own_answers(browser, server, expect, tmp_path):
    demo = server.demo
    requests = {
        "red": (_solid(tmp_path / "red.png", (210, 40, 40)), "What colour is the square?", 12),
        "blue": (_solid(tmp_path / "blue.png", (40, 40, 210)), "How many shapes are there?", 100),
    }
    params = demo.default_params("uniform")
    expected = {key: demo.ask(path, q, "uniform", b, params) for key, (path, q, b) in requests.items()}
    sessions = {key: _open(browser, server) for key in requests}
    try:
        for key, (path, question, budget) in requests.items():
            page = sessions[key][1]
            _upload(page, path)
            page.locator("#question textarea").fill(question)
            _set_budget(page, budget)
        # holding the demo's own lock keeps the first request from finishing until both are in flight
        # (Gradio shows its progress tracker on the status box of a page whose request is queued or running)
        with demo.lock:
            for key in requests:
                sessions[key][1].locator("#ask").click()
            for key in requests:
                sessions[key][1].wait_for_selector("#status [data-testid=status-tracker]:not(.hide)")
                expect(sessions[key][1].locator("#status")).not_to_contain_text("Done")
        for key, (_, _, budget) in requests.items():
            _ask_and_wait_done(sessions[key][1], expect, budget)

        colours = {}
        for key, (_, _, budget) in requests.items():
            page, outcome = sessions[key][1], expected[key]
            assert _answers(page) == (outcome.full.text, outcome.compressed.text)
            assert _stats(page)["visual tokens"] == (str(TOKENS), str(budget))
            _wait_for_image(page, "#view img")
            colours[key] = {
                name: page.locator(f"#{name} img").evaluate(MEAN_RGB_JS) for name in ("view", "overlay")
            }
            want = {"view": outcome.view, "overlay": outcome.overlay}
            for name, image in want.items():
                mean = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0).tolist()
                assert colours[key][name] == pytest.approx(mean, abs=4), (key, name)
        # each page shows its own picture (red vs blue), dimmed by its own budget (12 vs 100 tokens kept)
        assert colours["red"]["view"][0] > 2 * colours["red"]["view"][2]
        assert colours["blue"]["view"][2] > 2 * colours["blue"]["view"][0]
        assert sum(colours["blue"]["overlay"]) / sum(colours["blue"]["view"]) > 0.7
        assert sum(colours["red"]["overlay"]) / sum(colours["red"]["view"]) < 0.45
    finally:
        for context, _ in sessions.values():
            context.close()


def _not_an_image(page, tmp_path) -> str:
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image")
    _upload(page, notes)
    return "'notes.txt' is not an image"


def _corrupt_png(page, tmp_path) -> str:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(random.Random(0).randbytes(4096))
    _upload(page, corrupt)
    return "'corrupt.png' is not an image"


def _empty_question(page, tmp_path) -> str:
    page.locator("#question textarea").fill("")
    return "Please type a question about the image"


@pytest.mark.parametrize("make_bad_request", [_not_an_image, _corrupt_png, _empty_question])
def test_a_bad_request_shows_an_error_and_the_page_keeps_working(page, expect, tmp_path, make_bad_request):
    image = tmp_path / "scene.png"
    example_scenes()[0].save(image)
    question = page.locator("#question textarea")
    _upload(page, image)
    _ask_and_wait_done(page, expect, DEFAULT_BUDGET)

    message = make_bad_request(page, tmp_path)
    page.locator("#ask").click()
    status = page.locator("#status")
    expect(status).to_contain_text("Cannot answer")
    expect(status).to_contain_text(message)
    expect(page.get_by_text(message)).to_be_visible()
    # the previous answers and pictures are gone, so nothing stale passes for an answer to this request
    expect(page.locator("#compressed-answer textarea")).to_have_value("")
    expect(page.locator("#full-answer textarea")).to_have_value("")
    expect(page.locator("#overlay img")).to_have_count(0)

    # the same page, same server: a good request is answered again
    _upload(page, image)
    question.fill("How many shapes are there?")
    _set_budget(page, 30)
    _ask_and_wait_done(page, expect, 30)
    assert all(_answers(page))


def test_budget_sweep_fills_the_table_and_the_plot(page, tmp_path):
    image = tmp_path / "scene.png"
    example_scenes()[0].save(image)
    _upload(page, image)
    page.locator("#sweep").click()
    page.wait_for_function(
        "() => document.querySelector('#status')?.innerText.includes('Sweep done')", timeout=90_000
    )
    _wait_for_image(page, "#sweep-plot img")
    table = page.locator("#sweep-table").inner_text()
    assert "144" in table and "yes" in table  # the full budget reproduces the full answer
