"""The demo driven in headless Chromium: a real Gradio server on a free localhost port, Playwright clicks."""

from __future__ import annotations

import shutil
import socket

import pytest

from vlm_compress.bench.models import ToyProcessor, example_scenes
from vlm_compress.demo import Demo

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_llava):
    pytest.importorskip("gradio", reason="the demo needs gradio: pip install 'vlm-compress[demo]'")
    from vlm_compress.demo import build

    page = build(Demo(tiny_llava, ToyProcessor(tiny_llava), max_new_tokens=4))
    port = _free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}"
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


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server)
    page.wait_for_selector("#ask")
    yield page
    context.close()


def _upload(page, path) -> None:
    page.locator("#image-upload input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#image-upload :text('.png'), #image-upload :text('.txt')")


def test_upload_ask_and_see_answers_overlay_and_stats(page, tmp_path):
    image = tmp_path / "scene.png"
    example_scenes()[2].save(image)
    _upload(page, image)
    page.locator("#question textarea").fill("What colour is the circle?")
    page.locator("#ask").click()
    page.wait_for_function(
        "() => document.querySelector('#compressed-answer textarea')?.value.length > 0", timeout=90_000
    )
    assert page.locator("#full-answer textarea").input_value()
    assert "Done" in page.locator("#status").inner_text()
    overlay = page.locator("#overlay img")
    overlay.wait_for()
    page.wait_for_function("() => document.querySelector('#overlay img')?.naturalWidth > 0")
    assert overlay.evaluate("img => img.naturalWidth") >= 336
    assert "visual tokens" in page.locator("#stats").inner_text()
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_a_non_image_file_gives_a_message_in_the_page(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image")
    _upload(page, notes)
    page.locator("#ask").click()
    page.wait_for_function("() => document.querySelector('#status')?.innerText.includes('Cannot answer')")
    assert "not an image" in page.locator("#status").inner_text()
    assert page.locator("#compressed-answer textarea").input_value() == ""


def test_budget_sweep_fills_the_table_and_the_plot(page, tmp_path):
    image = tmp_path / "scene.png"
    example_scenes()[0].save(image)
    _upload(page, image)
    page.locator("#sweep").click()
    page.wait_for_function(
        "() => document.querySelector('#status')?.innerText.includes('Sweep done')", timeout=90_000
    )
    page.wait_for_function("() => document.querySelector('#sweep-plot img')?.naturalWidth > 0")
    table = page.locator("#sweep-table").inner_text()
    assert "144" in table and "yes" in table  # the full budget reproduces the full answer
