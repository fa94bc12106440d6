"""Every control of every console screen has an accessible name, and focus is visible."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page, expect

from tests.console.conftest import console_url, new_page, sign_in

# What Chromium computes as each control's accessible name (Playwright's aria snapshot is the
# same computation); a control without one is listed by its HTML.
UNNAMED_CONTROLS = """() => {
  const name = (el) => {
    const by = el.getAttribute("aria-labelledby");
    if (by) return by.split(/\\s+/).map((id) => document.getElementById(id)?.textContent || "")
      .join(" ").trim();
    if (el.getAttribute("aria-label")) return el.getAttribute("aria-label").trim();
    if (el.labels && el.labels.length) return [...el.labels].map((l) => l.textContent).join(" ")
      .trim();
    return (el.textContent || el.getAttribute("title") || el.getAttribute("alt") || "").trim();
  };
  const controls = document.querySelectorAll(
    "button, a[href], input:not([type=hidden]), select, textarea, [role=button], [tabindex]"
  );
  return [...controls].filter((el) => el.offsetParent !== null && !name(el))
    .map((el) => el.outerHTML.slice(0, 120));
}"""

SCREENS = [
    ("#/ready", "Ready to ship"),
    ("#/sale/sale-multibox", "Sale SO-1002"),
    ("#/attention", "Needs attention"),
    ("#/labels", "Labels"),
    ("#/health", "Health"),
]


async def unnamed(page: Page) -> list[str]:
    found: list[str] = await page.evaluate(UNNAMED_CONTROLS)
    return found


async def test_every_control_of_every_screen_has_an_accessible_name(
    browser: Browser, service: TestClient
) -> None:
    page = await new_page(browser)
    await page.goto(console_url(service))
    signin_unnamed = await unnamed(page)
    await sign_in(page, service)
    missing: dict[str, list[str]] = {"#/signin": signin_unnamed}
    for hash_, title in SCREENS:
        await page.goto(console_url(service, hash_))
        await expect(page.get_by_role("heading", level=1)).to_have_text(title)
        await page.wait_for_load_state("networkidle")
        missing[hash_] = await unnamed(page)

    assert {screen: names for screen, names in missing.items() if names} == {}


async def test_the_focused_control_is_visibly_outlined(
    browser: Browser, service: TestClient
) -> None:
    page = await new_page(browser)
    await sign_in(page, service)
    await page.keyboard.press("Tab")
    outline = await page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [document.activeElement.tagName, s.outlineStyle, s.outlineWidth]; }"
    )

    assert outline[0] in ("A", "BUTTON", "INPUT")
    assert outline[1] != "none" and outline[2] not in ("0px", ""), outline
