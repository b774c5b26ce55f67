#!/usr/bin/env python3
"""Screenshots of a report for the README: the top of the page, and one sample's detail
(conversation, base response, token heat map). Uses Debian's chromium through playwright,
as the browser tests do; no network.

    python reports/screenshots.py reports/example/report.html reports/example [--trait sycophancy]
"""

from __future__ import annotations

import argparse
from pathlib import Path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("out_dir")
    ap.add_argument("--trait", default="sycophancy", help="Trait whose top sample is opened.")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    url = Path(a.report).resolve().as_uri()
    out = Path(a.out_dir)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        context = browser.new_context(viewport={"width": 1366, "height": 900}, device_scale_factor=1)
        context.route(lambda u: u != url, lambda route: route.abort())
        page = context.new_page()
        page.goto(url)
        page.screenshot(path=str(out / "screenshot.png"))
        page.locator(f"#tbl-{a.trait} tbody tr").first.locator("a").click()
        detail = page.locator(f"#{a.trait}-1")
        detail.scroll_into_view_if_needed()
        detail.screenshot(path=str(out / "screenshot-detail.png"))
        browser.close()
    print(f"wrote {out / 'screenshot.png'} and {out / 'screenshot-detail.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
