"""The chat page in a real headless Chromium (Debian's ``chromium``, driven by Playwright; no browser download).

The page is loaded from a live server, a message is sent, and the reply must appear piece by piece (the test
watches the reply grow) and equal what the model streams; a screenshot goes to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("LMFORGE_CHROMIUM", "/usr/bin/chromium"))

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: on Debian/Ubuntu run "
                       "`apt-get install -y chromium` (or set LMFORGE_CHROMIUM to a Chromium binary)"),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.on("pageerror", lambda e: failed.append(f"page error: {e}"))
    page.goto(url)
    # Locator waits run outside the page's script world, so the page's strict CSP (no eval) stays on.
    sync_api.expect(page.locator("#model")).to_contain_text("context")
    return page, failed


def test_page_streams_a_reply(serve, tiny_lm, browser, artifacts):
    from serving_fakes import FakeLM, render_chat, reply_for

    # A slow fake engine first: 40 ms a token, so the reply is visibly built up piece by piece.
    srv = serve(FakeLM(delay=0.04))
    page, failed = _open(browser, srv.url + "/")
    page.fill("#temperature", "0")
    page.fill("#input", "Hello, model")
    page.click("#send")
    reply = page.locator(".msg.assistant .text").last
    sync_api.expect(reply).to_have_text(re.compile(r"^.{3,}$"))
    partial = reply.text_content()
    page.wait_for_selector("#send:not([disabled])", timeout=15000)
    final = reply.text_content()
    expected = reply_for(render_chat([{"role": "user", "content": "Hello, model"}]), temperature=0)[:24]
    assert final == expected
    assert 3 <= len(partial) < len(final)  # it was seen growing, not arriving at once
    assert not failed

    # The real tiny model: the page shows what the facade streams for the same settings.
    srv = serve(tiny_lm)
    page, failed = _open(browser, srv.url + "/")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "30")
    page.fill("#input", "Speak, speak.")
    page.click("#send")
    page.wait_for_selector("#send:not([disabled])", timeout=30000)
    messages = [{"role": "user", "content": "Speak, speak."}]
    direct = "".join(c.text for c in tiny_lm.stream_chat(messages, temperature=0.0, max_new_tokens=30))
    assert page.locator(".msg.user .text").last.text_content() == "Speak, speak."
    assert page.locator(".msg.assistant .text").last.text_content() == direct
    page.fill("#temperature", "0.9")  # a livelier second reply for the screenshot
    page.fill("#input", "All:")
    page.press("#input", "Enter")
    sync_api.expect(page.locator(".msg.assistant")).to_have_count(2)
    page.wait_for_selector("#send:not([disabled])", timeout=30000)
    shot = artifacts / "serving_chat_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5000
    page.click("#reset")
    assert page.locator(".msg").count() == 0
    assert not failed


def test_page_reports_server_errors_and_uses_the_api_key(serve, browser):
    from serving_fakes import FakeLM

    srv = serve(FakeLM(), api_key="page-key")
    page, _ = browser.new_page(), None
    page.goto(srv.url + "/")
    sync_api.expect(page.locator("#model")).to_contain_text("API key")
    page.fill("#apikey", "page-key")
    page.dispatch_event("#apikey", "change")
    sync_api.expect(page.locator("#model")).to_contain_text("fake-lm")
    page.fill("#max_tokens", "500")  # above the context of 64: the server refuses, the page says why
    page.fill("#input", "hi")
    page.click("#send")
    error = page.locator(".msg.error .text")
    error.wait_for(timeout=10000)
    assert "context" in error.text_content()
