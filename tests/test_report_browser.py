"""The report in a real headless Chromium: visible tables and heat maps, working sorting and
filtering, no console errors, no network, and a hostile corpus that does not execute.

Needs Debian's chromium (``make install`` installs it) and the playwright package (the
``dev`` extra; its own browser download is never used).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from report_helpers import LONG_LINE, hostile_run

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def chromium_path() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("Chromium is not installed: the report's browser tests need it. Run `make install` (Debian/Ubuntu: sudo apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: run `make install` (pip install -e '.[dev]'); its browser download is not needed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_lm):
    return hostile_run(tmp_path_factory.mktemp("browser"), tiny_lm, top_n=10)


def open_page(browser, path: str, scheme: str = "light"):
    """A page with every console message, page error and request recorded; nothing may leave."""
    context = browser.new_context(viewport={"width": 1366, "height": 768}, color_scheme=scheme)
    page = context.new_page()
    seen = {"console": [], "errors": [], "requests": []}
    page.on("console", lambda m: seen["console"].append((m.type, m.text)))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))
    # Anything that is not the report file itself is refused (and stays in the list above).
    url = Path(path).resolve().as_uri()
    context.route(lambda u: u != url, lambda route: route.abort())
    page.goto(url)
    page.wait_for_load_state("load")
    return context, page, seen, url


def test_report_in_chromium(browser, report, tmp_path):
    context, page, seen, url = open_page(browser, report["report"])
    try:
        # The title is ours: no payload rewrote it, set an attribute, or a global.
        assert page.title().startswith("persona-audit report")
        assert page.evaluate("document.body.getAttribute('data-pwned')") is None
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.evaluate("document.querySelectorAll('script').length") == 1
        assert page.evaluate("document.querySelectorAll('img, iframe, object, embed, textarea, svg[onload]').length") == 0

        # Ranked tables are visible and hold every row.
        for trait in ("evil", "sycophancy"):
            table = page.locator(f"#tbl-{trait}")
            assert table.is_visible()
            assert table.locator("tbody tr").count() == 8  # every scored sample (top_n 10 > 8)

        # Following a row's link opens its detail, with a visible, coloured heat map.
        page.locator("#tbl-evil tbody tr").first.locator("a").click()
        detail = page.locator("#evil-1")
        assert detail.evaluate("d => d.open") is True
        heat = detail.locator(".hm")
        assert heat.is_visible()
        coloured = heat.evaluate("h => Array.from(h.children).filter(s => getComputedStyle(s).backgroundColor !== 'rgba(0, 0, 0, 0)').length")
        assert coloured > 0
        first_token = heat.locator(":scope > span").first
        first_token.hover()
        tip = first_token.evaluate("s => getComputedStyle(s, '::after').content")
        assert tip.strip('"') == first_token.get_attribute("data-v")

        # Sorting: the delta column, clicked once, is descending; twice, ascending.
        button = page.locator("#tbl-evil thead th button", has_text="delta")
        values = "t => Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[3].getAttribute('data-v')))"
        button.click()
        desc = page.locator("#tbl-evil").evaluate(values)
        assert desc == sorted(desc, reverse=True)
        button.click()
        asc = page.locator("#tbl-evil").evaluate(values)
        assert asc == sorted(asc)

        # Filtering by text and by flag.
        tools = page.locator(".tools[data-table='tbl-evil']")
        tools.locator("input[type=search]").fill("plain.jsonl")
        assert page.locator("#tbl-evil tbody tr:not([hidden])").count() == 3
        assert tools.locator(".count").inner_text() == "3 of 8 rows"
        tools.locator("input[type=search]").fill("")
        tools.locator("input[type=checkbox]").check()
        flagged = page.locator("#tbl-evil tbody tr[data-flagged='1']").count()
        assert page.locator("#tbl-evil tbody tr:not([hidden])").count() == flagged

        # Every detail open, the 10,000-character line included: the page does not scroll sideways.
        page.locator(".tools[data-table='tbl-evil'] button[data-open='1']").click()
        assert page.get_by_text(LONG_LINE[:40]).first.is_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        long_block = page.locator(".msg .txt", has_text=LONG_LINE[:40]).first
        box = long_block.bounding_box()
        assert box and box["width"] <= 1366

        # On a narrow window too (the two response panels stack).
        page.set_viewport_size({"width": 600, "height": 900})
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.set_viewport_size({"width": 1366, "height": 768})

        shot = tmp_path / "report.png"
        page.locator("#evil-1").scroll_into_view_if_needed()
        page.screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

        assert page.title().startswith("persona-audit report")
        assert page.evaluate("document.body.getAttribute('data-pwned')") is None
        assert seen["errors"] == []
        assert [m for m in seen["console"] if m[0] in ("error", "warning")] == []
        assert seen["requests"] == [url]
    finally:
        context.close()


def test_report_dark_scheme(browser, report, tmp_path):
    context, page, seen, url = open_page(browser, report["report"], scheme="dark")
    try:
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        text = page.evaluate("getComputedStyle(document.body).color")
        assert background == "rgb(13, 17, 23)" and text == "rgb(230, 237, 243)"
        page.screenshot(path=str(tmp_path / "report-dark.png"))
        assert seen["errors"] == [] and [m for m in seen["console"] if m[0] == "error"] == []
        assert seen["requests"] == [url]
    finally:
        context.close()
