"""The operator console end to end in a real browser (Debian's Chromium, headless)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page, expect
from pypdf import PdfReader

from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.knobs import Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.automation.support import events, pack_payload, until
from tests.conftest import AUTH, HOOK, WEBHOOK_URL, MakeService
from tests.console.conftest import (
    console_url,
    new_page,
    save_doc_screenshot,
    screenshot,
    sign_in,
)
from tests.labels.test_exactly_once import sale_tracking

SLOW = 15_000  # ms: the write-back and the automation take a few polls


def createlabel_calls(sandbox: ShipStationSandbox) -> int:
    return sum(1 for path, _ in sandbox.received if path == "/shipments/createlabel")


async def rate(page: Page) -> None:
    await page.get_by_role("button", name="Get rates").click()
    await expect(page.locator("button.buy").first).to_be_visible()


async def no_horizontal_scroll(page: Page) -> bool:
    return bool(
        await page.evaluate(
            "document.scrollingElement.scrollWidth <= document.scrollingElement.clientWidth"
        )
    )


async def test_rate_buy_print_and_the_write_back_of_the_two_box_sale(
    browser: Browser, service: TestClient, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox,
    shots: Path,
) -> None:  # fmt: skip
    page = await new_page(browser)
    await page.goto(console_url(service))
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    await screenshot(page, shots, "signin")
    await sign_in(page, service)

    ready = page.locator("main table")
    await expect(ready).to_contain_text("SO-1001")
    await expect(ready).to_contain_text("SO-1002")
    await expect(ready).to_contain_text("Lone Star Bakers")
    await expect(ready).not_to_contain_text("SO-1004")  # shipped
    await expect(ready).not_to_contain_text("SO-1005")  # not packed
    await expect(ready).not_to_contain_text("loading…")
    await screenshot(page, shots, "ready")

    await page.get_by_role("link", name="Open sale SO-1002").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sale SO-1002")
    boxes = page.locator("section[aria-labelledby=boxes-h]")
    await expect(boxes).to_contain_text("Box 2")
    await expect(boxes).to_contain_text("GiftCard")  # what was assumed

    sandbox.knobs.latency = Latency(base_ms=700)  # slower than 300 ms: the page says it works
    await page.get_by_role("button", name="Get rates").click()
    await expect(page.locator("#busy")).to_have_text("Working…")
    await expect(page.locator("button.buy").first).to_be_visible()
    await expect(page.locator("#busy")).to_have_text("")
    sandbox.knobs.latency = Latency()

    cheapest = page.locator("main tbody tr[data-carrier]").first
    total = (await cheapest.locator("td").nth(5).inner_text()).split()[0]
    await cheapest.get_by_role("button").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text(f"total {total} USD")
    await page.locator("#confirm-ok").dblclick()  # a double click buys once

    tracking = page.locator("a.tracking")
    await expect(tracking).to_have_count(2)
    await expect(page.get_by_role("link", name="Label PDF of Box 1")).to_be_visible()
    await expect(page.get_by_role("link", name="Label PDF of Box 2")).to_be_visible()
    async with (
        page.expect_response(lambda r: r.url.endswith("/label.pdf")) as answer,
        page.context.expect_page() as tab,
    ):
        await page.get_by_role("button", name="Print all").click()
    response = await answer.value
    assert (response.status, response.headers["content-type"]) == (200, "application/pdf")
    assert (await tab.value).url.startswith("blob:")  # opened from the bytes fetched with the token
    path = response.url.removeprefix(str(service.make_url("")).rstrip("/"))
    assert path.endswith("/label.pdf") and "/packages/" not in path
    pdf = await service.get(path, headers=AUTH)  # the URL the page used
    assert len(PdfReader(BytesIO(await pdf.read())).pages) == 2

    await expect(page.locator("#write-back")).to_have_attribute("data-state", "done", timeout=SLOW)
    numbers = set(await tracking.all_inner_texts())
    assert sale_tracking(cin7_sandbox, "sale-multibox") == numbers
    assert createlabel_calls(sandbox) == 2  # one per box, bought once
    save_doc_screenshot(await screenshot(page, shots, "sale"))

    await page.get_by_role("link", name="Labels").click()
    await page.get_by_label("Order, sale or tracking number").fill(sorted(numbers)[0])
    await page.get_by_role("button", name="Show").click()
    await expect(page.locator("main tbody tr")).to_have_count(1)
    await expect(page.locator("main tbody")).to_contain_text("SO-1002")
    await screenshot(page, shots, "labels")
    assert page.errors == []  # type: ignore[attr-defined]


async def in_needs_attention(page: Page, row: str, why: str, shots: Path, name: str) -> None:
    """Opens Needs attention and sees SO-1001's ``row`` there with its reason."""
    await page.get_by_role("link", name="Needs attention").click()
    await expect(page.locator(row)).to_contain_text("SO-1001")
    await expect(page.locator(row)).to_contain_text(why)
    await screenshot(page, shots, name)


async def test_an_event_in_attention_is_retried_from_the_console(
    browser: Browser, service: TestClient, cin7_sandbox: Cin7Sandbox, shots: Path
) -> None:
    cin7_sandbox.knobs.down = True  # Cin7 Core refuses everything: the automation gives up
    await service.post(WEBHOOK_URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)
    await until(lambda: has_attention(service), seconds=30)

    page = await new_page(browser)
    await sign_in(page, service)
    await in_needs_attention(page, "tr[data-event-id]", "gave up after", shots, "attention")

    cin7_sandbox.knobs.down = False
    await page.get_by_role("button", name="Retry the event of SO-1001").click()
    await expect(page.get_by_role("status").filter(has_text="Queued again")).to_be_visible()
    await until(lambda: processed(service), seconds=20)
    await page.get_by_role("button", name="Refresh").click()
    await expect(page.get_by_text("No automation event needs attention.")).to_be_visible()

    await page.get_by_role("link", name="Health").click()
    await expect(
        page.get_by_role("heading", name="ShipStation budget (per API key)")
    ).to_be_visible()
    await expect(page.locator("#webhook")).to_be_visible()
    await screenshot(page, shots, "health")


async def test_a_label_whose_write_back_failed_is_retried_from_the_console(
    browser: Browser, make_automated: MakeService, cin7_sandbox: Cin7Sandbox, shots: Path
) -> None:
    # one refused write-back sends the label to Needs attention; the next try is 30 s away, so
    # what writes it back is the button
    service = await make_automated(
        RATESVC_WRITEBACK_ATTENTION_AFTER="1", RATESVC_WRITEBACK_RETRY_S="30"
    )
    cin7_sandbox.knobs.writes_down = True
    page = await new_page(browser)
    await sign_in(page, service)
    await page.get_by_role("link", name="Open sale SO-1001").click()
    await rate(page)
    await page.locator("button.buy").first.click()
    await page.locator("#confirm-ok").click()
    await expect(page.locator("#label-status")).to_have_text("attention", timeout=SLOW)
    await expect(page.locator("#write-back")).to_have_attribute("data-state", "failed")
    await expect(page.get_by_role("button", name="Retry write-back")).to_be_visible()
    tracking = await page.locator("a.tracking").inner_text()

    why = "write-back to Cin7 Core has failed 1 time(s)"
    await in_needs_attention(page, "tr[data-label-id]", why, shots, "attention-label")

    cin7_sandbox.knobs.writes_down = False
    await page.get_by_role("button", name="Retry the write-back of SO-1001").click()
    await expect(page.locator("#attention-news")).to_contain_text(
        "The label of SO-1001 is resolved: written back to Cin7 Core", timeout=SLOW
    )
    await expect(page.get_by_text("No label needs attention.")).to_be_visible()
    (label,) = (await (await service.get("/v1/labels", headers=AUTH)).json())["labels"]
    assert (label["status"], label["write_back"]["state"]) == ("completed", "done")
    assert sale_tracking(cin7_sandbox, "sale-simple") == {tracking}
    assert page.errors == []  # type: ignore[attr-defined]


async def has_attention(service: TestClient) -> bool:
    return any(e["status"] == "attention" for e in await events(service))


async def processed(service: TestClient) -> bool:
    return [e["status"] for e in await events(service)] == ["processed"]


async def test_a_wrong_token_is_refused_in_words_and_sign_out_forgets_the_token(
    browser: Browser, service: TestClient
) -> None:
    page = await new_page(browser)
    await sign_in(page, service, token="not-the-token")
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("That token was refused: the bearer token is not known")
    assert await page.evaluate("sessionStorage.length") == 0

    await sign_in(page, service)
    assert await page.evaluate("sessionStorage.getItem('ratesvc.token')") is not None
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    assert await page.evaluate("sessionStorage.getItem('ratesvc.token')") is None
    assert "token" not in page.url


async def tab_to(page: Page, selector: str, presses: int = 60) -> None:
    """Presses Tab until the element matching ``selector`` has the focus."""
    for _ in range(presses):
        if await page.evaluate(f"document.activeElement.matches({selector!r})"):
            outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert outline != "none", f"{selector} has the focus but shows none"
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")


async def test_the_buy_flow_with_the_keyboard_alone(
    browser: Browser, service: TestClient, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    page = await new_page(browser)
    await page.goto(console_url(service))
    await expect(page.get_by_label("API token")).to_be_focused()
    await page.keyboard.type(str(AUTH["Authorization"]).removeprefix("Bearer "))
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("link", name="Open sale SO-1002")).to_be_visible()

    await tab_to(page, "a[aria-label='Open sale SO-1002']")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sale SO-1002")
    await tab_to(page, "#get-rates")
    await page.keyboard.press("Enter")
    await expect(page.locator("button.buy").first).to_be_visible()
    await tab_to(page, "button.buy")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("dialog")).to_be_visible()
    await expect(page.locator("#confirm-ok")).to_be_focused()
    await page.keyboard.press("Enter")

    await expect(page.locator("a.tracking")).to_have_count(2)
    await tab_to(page, "#print-all")
    await expect(page.locator("#write-back")).to_have_attribute("data-state", "done", timeout=SLOW)
    assert createlabel_calls(sandbox) == 2
    assert len(sale_tracking(cin7_sandbox, "sale-multibox")) == 2


async def test_the_sale_screen_fits_a_phone(
    browser: Browser, service: TestClient, shots: Path
) -> None:
    page = await new_page(browser, width=390, height=844)
    await sign_in(page, service)
    await page.goto(console_url(service, "#/sale/sale-multibox"))
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sale SO-1002")
    await rate(page)
    assert await no_horizontal_scroll(page)
    await screenshot(page, shots, "sale-390-rates")

    await page.locator("button.buy").first.click()
    await page.locator("#confirm-ok").click()
    await expect(page.locator("a.tracking")).to_have_count(2)
    assert await no_horizontal_scroll(page)
    await screenshot(page, shots, "sale-390-label")
