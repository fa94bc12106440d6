"""The console in Debian's Chromium, driven by Playwright (its own browser builds never fetched),
against the service in front of both sandboxes on a real port."""

from __future__ import annotations

import os
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import TOKEN, MakeService

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).parents[2] / "docs"
# RATESVC_UPDATE_SCREENSHOTS=1 rewrites docs/console-sale.png (committed, shown by the README).
UPDATE_DOCS = os.environ.get("RATESVC_UPDATE_SCREENSHOTS") == "1"


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=args
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def service(make_automated: MakeService) -> TestClient:
    """The service with both sandboxes, quick write-backs and automation (poller off)."""
    return await make_automated(RATESVC_WRITEBACK_RETRY_S="0.05")


@pytest.fixture
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Screenshots of each screen (not committed)."""
    return tmp_path_factory.mktemp("console-screens")


def console_url(service: TestClient, hash_: str = "") -> str:
    return str(service.make_url("/console/")) + hash_


async def new_page(browser: Browser, width: int = 1280, height: int = 800) -> Page:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text) if msg.type == "error" and "401" not in msg.text else None
        ),
    )
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def sign_in(page: Page, service: TestClient, token: str = TOKEN) -> None:
    await page.goto(console_url(service))
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    if token == TOKEN:
        await expect(page.get_by_role("heading", level=1)).to_have_text("Ready to ship")


def png_pixels(png: bytes) -> bytes:
    """The decompressed image data of a PNG (its IDAT chunks)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    data, at = b"", 8
    while at < len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        kind = png[at + 4 : at + 8]
        if kind == b"IDAT":
            data += png[at + 8 : at + 8 + length]
        at += 12 + length
    return zlib.decompress(data)


async def screenshot(page: Page, shots: Path, name: str) -> bytes:
    """Saves a full-page screenshot and checks it is not blank: a blank page's filtered rows are
    a handful of byte values, text and tables bring many (and a larger file)."""
    png = await page.screenshot(path=shots / f"{name}.png", full_page=True)
    assert len(set(png_pixels(png))) > 64, f"{name}: the screenshot looks blank"
    assert len(png) > 8_000, f"{name}: the screenshot looks blank"
    return png


def save_doc_screenshot(png: bytes) -> None:
    if UPDATE_DOCS:
        DOCS.mkdir(exist_ok=True)
        (DOCS / "console-sale.png").write_bytes(png)
