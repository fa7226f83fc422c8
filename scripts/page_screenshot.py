"""The README's picture of the page: a running `hashrec serve`'s page, a photo uploaded,
two hashtags kept, the reasons of a third shown; written to docs/page.png.

    .venv/bin/python scripts/page_screenshot.py [--url http://127.0.0.1:8080/] [PHOTO]

Drives Debian's chromium through Playwright (its own browser download cannot work here).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

from shared.config import data_root

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", nargs="?", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8080/")
    parser.add_argument("--name", default="ann", help="the local account to sign in as "
                        "(made on first use)")
    parser.add_argument("--password", default="a picture of dinner")
    parser.add_argument("--out", type=Path, default=Path("docs/page.png"))
    args = parser.parse_args()
    photo = args.photo or data_root() / "food" / "images" / "0000008.jpg"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", headless=True,
            args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 860})
        page.goto(args.url)
        page.fill("#name", args.name)
        page.fill("#password", args.password)
        page.click("#signup")
        page.wait_for_function("() => !document.querySelector('#error').hidden || "
                               "!document.querySelector('#signed-in').hidden")
        if page.locator("#signed-in").is_hidden():  # the account exists: sign in
            page.fill("#password", args.password)
            page.click("#signin")
        page.locator("#signed-in").wait_for()
        page.set_input_files("#file", str(photo))
        chips = page.locator("#chips .chip")
        chips.first.wait_for(timeout=120_000)
        chips.nth(0).locator(".toggle").click()
        chips.nth(2).locator(".toggle").click()
        chips.nth(1).locator(".toggle").hover()
        page.wait_for_timeout(300)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
