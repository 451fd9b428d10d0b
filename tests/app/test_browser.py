"""The search page in headless Chromium (Debian's, driven by Playwright), clicked through as a user
does, at desktop and phone sizes: each test asserts what is visible (results, the query image, no
stale results, no console errors) and saves screenshots under tests/artifacts/screenshots/."""

from __future__ import annotations

import re
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
SIZES = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
READABLE_SCORE = re.compile(r"^\d{1,3}% (match|of best)$")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(settings):
    port = _free_port()
    instance = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    for _ in range(400):
        if instance.started:
            break
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", instance, thread


@pytest.fixture
def server(app_dirs):
    url, instance, thread = _serve(make_settings(app_dirs))
    yield url
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield launched
        launched.close()


class Page:
    """A page at one viewport size that records console errors and uncaught exceptions."""

    def __init__(self, browser, size: str, javascript: bool = True):
        self.size = size
        self.context = browser.new_context(viewport=SIZES[size], java_script_enabled=javascript)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def shot(self, name: str) -> None:
        """Wait for every thumbnail to load, then save a full-page screenshot."""
        loaded = "[...document.images].every(img => img.complete && img.naturalWidth > 0)"
        for _ in range(100):  # polled from here: waiting in the page needs its JavaScript, which may be off
            if self.page.evaluate(loaded):
                break
            time.sleep(0.1)
        assert self.page.evaluate(loaded), "a thumbnail did not load"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}-{self.size}.png"), full_page=True)

    def visible_cards(self) -> int:
        return self.page.locator("#results li.card:visible").count()

    def assert_no_errors(self, allowed: tuple[str, ...] = ()) -> None:
        unexpected = [e for e in self.errors if not any(a in e for a in allowed)]
        assert not unexpected, unexpected
        assert not self.page.locator("#status .error:visible").count()


@pytest.fixture(params=list(SIZES))
def user(browser, request):
    page = Page(browser, request.param)
    yield page
    page.context.close()


def _text_search(user: Page, server: str, query: str) -> None:
    user.page.goto(server + "/")
    user.page.fill("#q", query)
    user.page.keyboard.press("Enter")
    user.page.wait_for_selector("#results li.card img")


def test_empty_pages_show_no_more_button_and_no_console_errors(server, user):
    for mode in ("text", "image", "arith"):
        user.page.goto(f"{server}/?mode={mode}")
        assert user.page.locator(f"#panel-{mode}").is_visible()
        assert not user.page.locator("#more").is_visible()
        assert user.page.locator("#results").inner_text().strip() == ""
    user.shot("home")
    assert user.page.request.get(server + "/favicon.ico").ok
    user.assert_no_errors()


def test_type_search_then_more_results_then_reload(server, user):
    _text_search(user, server, "a small red circle")
    assert user.visible_cards() == 24
    assert "q=a%20small%20red%20circle" in user.page.url
    scores = user.page.locator("#results .score").all_inner_texts()
    assert all(READABLE_SCORE.match(s) for s in scores), scores[:3]
    assert user.page.locator("img[loading=lazy]").count() == 0  # a screenshot never catches blank cards
    user.shot("text-search")
    user.page.click("#more")
    user.page.wait_for_function("document.querySelectorAll('#results li.card').length > 24")
    assert user.visible_cards() == 40  # the whole 40-image gallery: no more pages
    assert not user.page.locator("#more").is_visible()
    user.page.reload()  # a shared URL shows the same search
    user.page.wait_for_selector("#results li.card")
    assert user.page.input_value("#q") == "a small red circle" and user.visible_cards() == 24
    user.assert_no_errors()


def test_use_as_query_shows_the_query_image_above_its_captions(server, user):
    _text_search(user, server, "a blue square")
    button = user.page.locator("#results li.card button.use").nth(5)
    chosen = button.get_attribute("data-id")
    button.scroll_into_view_if_needed()
    button.click()
    user.page.wait_for_selector("#results ol.captions li .text")
    assert user.page.url.endswith(f"?mode=image&id={chosen}")
    query = user.page.locator("#image-drop img.query-thumb")
    user.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=query.element_handle())
    assert query.is_visible() and query.get_attribute("src") == f"/images/{chosen}/thumb"
    assert user.page.evaluate("window.scrollY") == 0  # the query is in view, not scrolled past
    assert user.visible_cards() == 0  # no stale image results
    texts = user.page.locator("#results ol.captions li .text").all_inner_texts()
    assert len(texts) == len(set(texts)) >= 5  # identical captions are one result
    user.shot("use-as-query")
    user.assert_no_errors()


def test_upload_and_drag_and_drop_show_the_query_and_its_captions(server, user, tmp_path):
    image = tmp_path / "blue.png"
    image.write_bytes(png_bytes((30, 60, 220)))
    user.page.goto(server + "/?mode=image")
    user.page.set_input_files("#image-file", str(image))
    user.page.wait_for_selector("#results ol.captions li .text")
    assert user.page.locator("#image-drop img.query-thumb").get_attribute("alt") == "query image blue.png"
    assert user.page.locator("#results ol.captions li").count() >= 5
    user.shot("upload")
    # Drag and drop a second image onto the drop zone.
    user.page.evaluate("document.querySelector('#results').innerHTML = ''")
    drop = user.page.evaluate_handle("""bytes => {
        const data = new DataTransfer();
        data.items.add(new File([new Uint8Array(bytes)], "red.png", { type: "image/png" }));
        return data; }""", list(png_bytes((220, 30, 30))))
    user.page.dispatch_event("#image-drop", "dragover", {"dataTransfer": drop})
    user.page.dispatch_event("#image-drop", "drop", {"dataTransfer": drop})
    user.page.wait_for_selector("#results ol.captions li .text")
    assert user.page.locator("#image-drop img.query-thumb").get_attribute("alt") == "query image red.png"
    user.assert_no_errors()


def test_an_error_clears_old_results_and_a_good_query_recovers(server, user, tmp_path):
    _text_search(user, server, "a green star")
    user.page.fill("#q", "   ")
    user.page.keyboard.press("Enter")
    assert user.page.locator("#status .error").inner_text() == "Type what you are looking for."
    assert user.visible_cards() == 0 and not user.page.locator("#more").is_visible()
    # A file that is not an image: an error, no broken query image, no old results.
    user.page.click(".modes a[data-mode=image]")
    readme = tmp_path / "README.md"
    readme.write_text("# not an image\n")
    user.page.set_input_files("#image-file", str(readme))
    assert "README.md is not an image" in user.page.locator("#status .error").inner_text()
    assert user.page.locator("img.query-thumb").count() == 0
    # An image file the server cannot decode: its message, and the preview goes.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    user.page.set_input_files("#image-file", str(broken))
    user.page.wait_for_selector("#status .error")
    assert user.page.locator("img.query-thumb").count() == 0 and user.page.locator("#results li").count() == 0
    # An unknown word in the arithmetic composer: named, and nothing stale below.
    user.page.click(".modes a[data-mode=arith]")
    user.page.fill("#arith-id", "1")
    user.page.fill("#word", "zebra")
    user.page.click("#add-plus")
    user.page.click("#arith-form button[type=submit]")
    user.page.wait_for_selector("#status .error")
    assert "zebra" in user.page.locator("#status .error").inner_text() and user.visible_cards() == 0
    user.shot("error")
    # Then a good query shows its results and no error.
    user.page.click(".modes a[data-mode=text]")
    user.page.fill("#q", "a red circle")
    user.page.keyboard.press("Enter")
    user.page.wait_for_selector("#results li.card img")
    assert user.visible_cards() == 24 and user.page.locator("#status").inner_text().strip() == ""
    user.assert_no_errors(allowed=("status of 400", "status of 415", "status of 422"))  # the failed requests themselves


def test_arithmetic_chips_add_remove_and_search(server, user, client):
    first_id = client.get("/api/search/text", params={"q": "a red circle", "k": 1}).json()["results"][0]["id"]
    user.page.goto(server + "/?mode=arith")
    user.page.fill("#arith-id", str(first_id))
    for word, button in (("red", "#add-minus"), ("blue", "#add-plus"), ("green", "#add-plus")):
        user.page.fill("#word", word)
        user.page.click(button)
    assert user.page.locator("#chips .chip").all_inner_texts()[0].startswith("− red")
    user.page.locator("#chips .chip", has_text="green").locator("button.remove").click()
    assert user.page.locator("#chips .chip").count() == 2
    user.page.fill("#word", "circle")
    user.page.keyboard.press("Enter")  # Enter adds a "+ word" chip
    user.page.click("#arith-form button[type=submit]")
    user.page.wait_for_selector("#results li.card img")
    assert "minus=red" in user.page.url and "plus=blue" in user.page.url and "plus=green" not in user.page.url
    assert f"id={first_id}" in user.page.url and user.visible_cards() == 24
    user.shot("arithmetic")
    user.assert_no_errors()


def test_back_and_forward_restore_each_search_from_the_url(server, user):
    _text_search(user, server, "a red circle")
    first = user.page.locator("#results li.card img").first.get_attribute("src")
    user.page.fill("#q", "a yellow hexagon")
    user.page.keyboard.press("Enter")
    user.page.wait_for_url("**q=a%20yellow%20hexagon")
    user.page.wait_for_selector("#results li.card img")
    user.page.go_back()
    user.page.wait_for_function("document.querySelector('#q').value === 'a red circle'")
    user.page.wait_for_selector("#results li.card img")
    assert user.page.locator("#results li.card img").first.get_attribute("src") == first
    user.page.go_forward()
    user.page.wait_for_function("document.querySelector('#q').value === 'a yellow hexagon'")
    assert user.visible_cards() == 24
    user.assert_no_errors()


@pytest.mark.parametrize("size", list(SIZES))
def test_search_and_use_as_query_without_javascript(server, browser, size):
    user = Page(browser, size, javascript=False)
    try:
        user.page.goto(server + "/")
        assert not user.page.locator("#more").is_visible()
        user.page.fill("#q", "a blue square")
        user.page.keyboard.press("Enter")
        user.page.wait_for_selector("#results li.card")
        assert "q=a+blue+square" in user.page.url and user.visible_cards() == 24
        assert "Serving" in user.page.inner_text("#about")
        user.page.locator("#results a.use").first.click()
        user.page.wait_for_selector("#results ol.captions li")
        assert user.page.locator("#image-drop img.query-thumb").is_visible()
        texts = user.page.locator("#results ol.captions li .text").all_inner_texts()
        assert len(texts) == len(set(texts))
        user.shot("no-javascript")
    finally:
        user.context.close()


def test_the_page_fits_a_phone(server, browser):
    user = Page(browser, "phone")
    try:
        for path in ("/?mode=text&q=a+green+star", "/?mode=image&id=3"):
            user.page.goto(server + path)
            user.page.wait_for_selector("#results li")
            assert user.page.evaluate("document.documentElement.scrollWidth") <= SIZES["phone"]["width"]
        user.shot("phone-captions")
        user.assert_no_errors()
    finally:
        user.context.close()


def test_gxn_generated_caption_and_imagined_image_on_the_page(gxn_dirs, browser, tmp_path):
    url, instance, thread = _serve(make_settings(gxn_dirs, default_index="gxn"))
    image = tmp_path / "query.png"
    image.write_bytes(png_bytes((30, 60, 220)))
    user = Page(browser, "desktop")
    try:
        user.page.goto(url + "/")
        user.page.fill("#q", "a small red circle")
        user.page.keyboard.press("Enter")
        imagined = user.page.wait_for_selector("#results figure.imagined img")
        user.page.wait_for_function("img => img.complete && img.naturalWidth === 32", arg=imagined)
        assert user.page.inner_text("#results figure.imagined figcaption") == "what the model imagined"
        user.shot("gxn-imagined")
        user.page.goto(url + "/?mode=image")
        user.page.set_input_files("#image-file", str(image))
        user.page.wait_for_selector("#results p.generated q")
        assert user.page.inner_text("#results p.generated").startswith("Generated caption:")
        assert user.page.locator("#results ol.captions li").count() >= 5
        user.assert_no_errors()
    finally:
        user.context.close()
        instance.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("size", list(SIZES))
def test_dan_attention_on_the_page_bold_words_and_a_heat_overlay(dan_dirs, browser, tmp_path, size):
    url, instance, thread = _serve(make_settings(dan_dirs))  # the default index is "tiny": DAN by ?index=
    image = tmp_path / "query.png"
    image.write_bytes(png_bytes((30, 60, 220), size=96))
    user = Page(browser, size)
    try:
        user.page.goto(url + "/?index=dan")
        user.page.fill("#q", "a small red circle to the left")
        user.page.keyboard.press("Enter")
        user.page.wait_for_selector("#results p.attention span.attended")
        words = user.page.locator("#results p.attention span.attended")
        assert words.count() == 7 and user.page.locator("#results p.attention span.strong").count() >= 1
        bold = user.page.eval_on_selector("#results p.attention span.strong", "s => getComputedStyle(s).fontWeight")
        assert int(bold) >= 700
        assert "index=dan" in user.page.url  # the shared URL keeps the index
        user.shot("dan-words")
        user.page.goto(url + "/?mode=image&index=dan")
        user.page.set_input_files("#image-file", str(image))
        overlay = user.page.wait_for_selector("#results figure.looked .heat")
        assert user.page.locator("#results figure.looked .cells span").count() == 49
        box, picture = overlay.bounding_box(), user.page.locator("#results figure.looked img").bounding_box()
        assert box["width"] == picture["width"] > 100 and box["height"] == picture["height"]  # the grid covers it
        user.shot("dan-heat")
        user.assert_no_errors()
    finally:
        user.context.close()
        instance.should_exit = True
        thread.join(timeout=10)
