"""``/console/``: the console's files, served without the token, with a strict CSP."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient

from ratesvc.console import CSP, STATIC


async def test_the_console_is_served_without_a_token_with_strict_headers(
    service: TestClient,
) -> None:
    response = await service.get("/console/")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-cache"
    assert '<script type="module" src="js/app.js"></script>' in await response.text()

    script = await service.get("/console/js/screens/sale.js")
    assert script.content_type == "text/javascript"
    assert "Idempotency-Key" in await script.text()
    again = await service.get("/console/", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status == 304


async def test_console_without_a_slash_redirects_and_unknown_files_are_404(
    service: TestClient,
) -> None:
    redirect = await service.get("/console", allow_redirects=False)
    assert (redirect.status, redirect.headers["Location"]) == (308, "/console/")
    for path in ("/console/nope.js", "/console/../ratesvc/app.py", "/console/js", "/console/js/",
                 "/console/__init__.py"):  # fmt: skip
        missing = await service.get(path)
        assert missing.status == 404, path
        assert missing.content_type == "application/problem+json"
        assert (await missing.json())["code"] == "not_found"


def test_the_files_have_no_inline_script_style_or_markup_built_from_text() -> None:
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "<style" not in html and " style=" not in html
    for module in STATIC.rglob("*.js"):
        source = module.read_text()
        assert "innerHTML" not in source and "insertAdjacentHTML" not in source, module
        assert "localStorage" not in source, module  # the token stays in sessionStorage
