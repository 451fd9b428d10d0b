"""The search page in headless Chromium (Debian's, driven by Playwright): each mode end to end,
with a screenshot of each saved under tests/artifacts/screenshots/."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from app.main import create_app
from tests.app.conftest import make_settings, png_bytes

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install -e '.[test]')")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists() and not shutil.which("chromium"),
                                 reason="Debian chromium is not installed (apt-get install chromium)")]
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(app_dirs):
    port = _free_port()
    config = uvicorn.Config(create_app(make_settings(app_dirs)), host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    for _ in range(200):
        if instance.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def page(tmp_path):
    with playwright_api.sync_playwright() as playwright:
        browser = launch(playwright)  # Playwright gives each launch a fresh profile folder
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        yield context.new_page()
        browser.close()


def _shot(page, name: str) -> None:
    """Scroll so lazy thumbnails load, wait for them, then save a full-page screenshot."""
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("[...document.images].every(img => img.complete && img.naturalWidth > 0)")
    page.evaluate("window.scrollTo(0, 0)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_text_search_shows_thumbnails_and_keeps_the_query_in_the_url(server, page):
    page.goto(server + "/")
    page.fill("#q", "a small red circle")
    page.keyboard.press("Enter")
    page.wait_for_selector("#results li.card img")
    assert page.locator("#results li.card").count() == 24
    assert "q=a%20small%20red%20circle" in page.url
    first = page.locator("#results li.card img").first
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first.element_handle())
    _shot(page, "text-search")
    page.click("#more")
    page.wait_for_function("document.querySelectorAll('#results li.card').length > 24")
    page.reload()  # a shared URL shows the same search
    page.wait_for_selector("#results li.card")
    assert page.input_value("#q") == "a small red circle"


def test_image_upload_shows_captions(server, page, tmp_path):
    image = tmp_path / "query.png"
    image.write_bytes(png_bytes((30, 60, 220)))
    page.goto(server + "/?mode=image")
    page.set_input_files("#image-file", str(image))
    page.wait_for_selector("#results ol.captions li .text")
    assert page.locator("#results ol.captions li").count() >= 10
    _shot(page, "image-search")
    page.locator("#results button.use").first.click()  # "use as query" on a result
    page.wait_for_url("**mode=image&id=*")


def test_arithmetic_composer(server, page, client):
    first_id = client.get("/api/search/text", params={"q": "a red circle", "k": 1}).json()["results"][0]["id"]
    page.goto(server + "/?mode=arith")
    page.fill("#arith-id", str(first_id))
    page.fill("#word", "red")
    page.click("#add-minus")
    page.fill("#word", "blue")
    page.keyboard.press("Enter")  # Enter adds a "+ word" chip
    assert page.locator("#chips .chip").count() == 2
    page.click("#arith-form button[type=submit]")
    page.wait_for_selector("#results li.card img")
    assert "minus=red" in page.url and "plus=blue" in page.url
    _shot(page, "arithmetic")


def test_text_search_works_without_javascript(server, tmp_path):
    with playwright_api.sync_playwright() as playwright:
        browser = launch(playwright)  # Playwright gives each launch a fresh profile folder
        page = browser.new_context(java_script_enabled=False).new_page()
        page.goto(server + "/")
        page.fill("#q", "a blue square")
        page.keyboard.press("Enter")
        page.wait_for_selector("#results li.card")
        assert "q=a+blue+square" in page.url and page.locator("#results li.card").count() == 24
        assert "Serving" in page.inner_text("#about")
        browser.close()


def test_page_is_readable_on_a_phone(server, tmp_path):
    with playwright_api.sync_playwright() as playwright:
        browser = launch(playwright)  # Playwright gives each launch a fresh profile folder
        page = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=2).new_page()
        page.goto(server + "/?mode=text&q=a+green+star")
        page.wait_for_selector("#results li.card")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375  # no sideways scrolling
        _shot(page, "phone")
        browser.close()


def test_gxn_generated_caption_and_imagined_image_on_the_page(gxn_dirs, tmp_path):
    port = _free_port()
    config = uvicorn.Config(create_app(make_settings(gxn_dirs, default_index="gxn")), host="127.0.0.1", port=port,
                            log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    while not instance.started:
        time.sleep(0.05)
    image = tmp_path / "query.png"
    image.write_bytes(png_bytes((30, 60, 220)))
    try:
        with playwright_api.sync_playwright() as playwright:
            browser = launch(playwright)
            page = browser.new_context(viewport={"width": 1100, "height": 900}).new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#q", "a small red circle")
            page.keyboard.press("Enter")
            imagined = page.wait_for_selector("#results figure.imagined img")
            page.wait_for_function("img => img.complete && img.naturalWidth === 32", arg=imagined)
            assert page.inner_text("#results figure.imagined figcaption") == "what the model imagined"
            _shot(page, "gxn-imagined")
            page.goto(f"http://127.0.0.1:{port}/?mode=image")
            page.set_input_files("#image-file", str(image))
            page.wait_for_selector("#results p.generated q")
            assert page.inner_text("#results p.generated").startswith("Generated caption:")
            assert page.locator("#results ol.captions li").count() >= 10
            browser.close()
    finally:
        instance.should_exit = True
        thread.join(timeout=10)
