"""The page in a real headless browser: Debian's chromium, driven by Playwright, against the
gateway in front of the real stack. Screenshots go to out/."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from services.gateway.server import Settings
from tests.servers import free_port, start_gateway, stop_gateway

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: as this machine's probe starts it: its closed network refuses background connections
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUT = Path(__file__).parents[1] / "out"
WAIT = 120_000  # ms: the first answer trains nothing, but the CPU may be shared


@pytest.fixture(scope="module")
def page_url(stack: dict, data_dir: Path, tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[str]:
    server, url = start_gateway(stack["loop"], Settings(
        recommender=stack["recommender"].address, photo_root=data_dir,
        accounts_path=tmp_path_factory.mktemp("accounts") / "accounts.sqlite"))
    yield f"{url}/"
    stop_gateway(stack["loop"], server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=ARGS)
        yield browser
        browser.close()


def _sign_up(page: Page, name: str) -> None:
    page.fill("#name", name)
    page.fill("#password", "a long enough password")
    page.click("#signup")
    expect(page.locator("#whoami")).to_have_text(f"Signed in as {name}")
    expect(page.locator("#signin-form")).to_be_hidden()


def _page(browser: Browser, width: int = 1100, height: int = 900) -> tuple[Page, list]:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" and "status of 4" not in message.text else None)
    return page, problems


def _hashtags(page: Page) -> list[str]:
    return page.locator("#chips .chip").evaluate_all("els => els.map(e => e.dataset.hashtag)")


def test_sign_up_upload_keep_two_save_and_the_next_answer_changes(
        browser: Browser, page_url: str, stack: dict, data_dir: Path) -> None:
    page, problems = _page(browser)
    page.goto(page_url)
    _sign_up(page, "page-user")
    page.set_input_files("#file", str(data_dir / "food" / "images" / "0000022.jpg"))
    chips = page.locator("#chips .chip")
    expect(chips.first).to_be_visible(timeout=WAIT)
    expect(page.locator("#preview")).to_be_visible()
    before = _hashtags(page)
    assert len(before) == 15
    chips.first.locator(".toggle").hover()
    why = chips.first.locator(".why")
    expect(why).to_be_visible()
    expect(why).to_contain_text("rank")
    # Keep two the user model knows, from low in the list: the profile learns them.
    known = stack["user"].servicer.lookup.hashtag_rows
    kept = [h for h in reversed(before) if h in known][:2]
    assert len(kept) == 2
    for hashtag in kept:
        toggle = page.locator(f'#chips .chip[data-hashtag="{hashtag}"] .toggle')
        toggle.click()
        expect(toggle).to_have_attribute("aria-pressed", "true")
    page.click("#save")
    expect(page.locator("#saved")).to_contain_text("Saved to page-user's profile",
                                                   timeout=WAIT)
    page.wait_for_function("before => JSON.stringify([...document.querySelectorAll("
                           "'#chips .chip')].map(e => e.dataset.hashtag)) !== before",
                           arg=json.dumps(before, separators=(",", ":"), ensure_ascii=False),
                           timeout=WAIT)
    after = _hashtags(page)
    assert after != before
    user_signals = page.locator(".why", has_text="your own habits")
    assert user_signals.count() > 0  # the user model now speaks for this person
    OUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUT / "page.png"), full_page=True)
    # The gallery for a hashtag shows photos that load.
    page.locator(f'#chips .chip[data-hashtag="{kept[0]}"] .grid').click()
    photo = page.locator("#photos img").first
    expect(photo).to_be_visible(timeout=WAIT)
    page.wait_for_function("() => [...document.querySelectorAll('#photos img')]"
                           ".some(i => i.complete && i.naturalWidth > 0)", timeout=WAIT)
    # My photos: the saved upload, shown to its owner.
    page.click("#my-photos")
    expect(page.locator("#photos figure.mine img")).to_have_count(1, timeout=WAIT)
    page.wait_for_function("() => document.querySelector('#photos figure.mine img')"
                           ".naturalWidth > 0", timeout=WAIT)
    assert not problems, problems


def test_a_second_account_cannot_see_the_first_ones_upload(
        browser: Browser, page_url: str, stack: dict, data_dir: Path) -> None:
    first = browser.new_context()
    base = page_url.rstrip("/")
    request = first.request
    assert request.post(f"{base}/api/account/signup", data={
        "name": "page-first", "password": "a long enough password"}).status == 201
    photo = (data_dir / "food" / "images" / "0000022.jpg").read_bytes()
    answer = request.post(f"{base}/api/recommend", multipart={
        "image": {"name": "p.jpg", "mimeType": "image/jpeg", "buffer": photo}}).json()
    hashtag = next(h["hashtag"] for h in answer["hashtags"]
                   if h["hashtag"] in stack["user"].servicer.lookup.hashtag_rows)
    saved = request.post(f"{base}/api/feedback", data={
        "hashtags": [hashtag], "image_sha256": answer["image_sha256"]})
    assert saved.status == 200, saved.text()
    url = f"/photos/{answer['image_sha256']}"
    assert request.get(f"{base}{url}").status == 200  # the owner sees it
    retrieved = request.get(f"{base}/api/retrieve?hashtag={hashtag}&k=100").json()
    assert url in [p["url"] for p in retrieved["photos"]]
    first.close()

    page, problems = _page(browser)
    page.goto(page_url)
    _sign_up(page, "page-second")
    page.set_input_files("#file", str(data_dir / "food" / "images" / "0000008.jpg"))
    expect(page.locator("#chips .chip").first).to_be_visible(timeout=WAIT)
    shown = page.request.get(f"{base}/api/retrieve?hashtag={hashtag}&k=100").json()
    assert url not in [p["url"] for p in shown["photos"]]
    assert answer["image_sha256"] not in [p["photo_id"] for p in shown["photos"]]
    page.click("#my-photos")
    expect(page.locator("#gallery-status")).to_have_text("You have saved no photos yet.",
                                                         timeout=WAIT)
    response = page.goto(f"{base}{url}")  # by URL: not found
    assert response is not None and response.status == 404
    assert not problems, problems


def test_signed_out_save_is_not_offered(browser: Browser, page_url: str,
                                        data_dir: Path) -> None:
    page, problems = _page(browser)
    page.goto(page_url)
    page.set_input_files("#file", str(data_dir / "food" / "images" / "0000008.jpg"))
    expect(page.locator("#chips .chip").first).to_be_visible(timeout=WAIT)
    page.locator("#chips .chip .toggle").first.click()
    expect(page.locator("#save")).to_be_hidden()
    expect(page.locator("#save-hint")).to_be_visible()
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#signed-in")).to_be_hidden()
    assert not problems, problems


def test_a_file_that_is_not_a_photo_gets_a_visible_error(browser: Browser, page_url: str,
                                                         tmp_path: Path) -> None:
    page, _ = _page(browser)
    page.goto(page_url)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    page.set_input_files("#file", str(notes))
    expect(page.locator("#error")).to_contain_text("not a photo")
    junk = tmp_path / "junk.jpg"  # a photo by name only: the service says what it is
    junk.write_bytes(bytes(range(256)) * 64)
    page.set_input_files("#file", str(junk))
    expect(page.locator("#error")).to_contain_text("not a decodable image", ignore_case=True,
                                                   timeout=WAIT)
    expect(page.locator("#results")).to_be_hidden()


def test_the_service_down_is_said_plainly(browser: Browser, stack: dict,
                                          data_dir: Path) -> None:
    server, url = start_gateway(stack["loop"], Settings(
        recommender=f"127.0.0.1:{free_port()}", timeout=5))
    try:
        page, _ = _page(browser)
        page.goto(f"{url}/")
        page.set_input_files("#file", str(data_dir / "food" / "images" / "0000008.jpg"))
        expect(page.locator("#error")).to_contain_text("cannot answer now", timeout=WAIT)
    finally:
        stop_gateway(stack["loop"], server)


def test_the_page_fits_a_phone_and_works_by_keyboard(browser: Browser, page_url: str,
                                                     data_dir: Path) -> None:
    page, problems = _page(browser, width=390, height=844)
    page.goto(page_url)
    page.set_input_files("#file", str(data_dir / "food" / "images" / "0000008.jpg"))
    expect(page.locator("#chips .chip").first).to_be_visible(timeout=WAIT)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.locator("#chips .chip .toggle").first.focus()
    page.keyboard.press("Enter")  # a chip is a button: Enter keeps it
    expect(page.locator("#chips .chip .toggle").first).to_have_attribute("aria-pressed",
                                                                         "true")
    expect(page.locator("#chips .chip .why").first).to_be_visible()  # focus shows why
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "grid"
    OUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUT / "page-phone.png"), full_page=True)
    assert not problems, problems
