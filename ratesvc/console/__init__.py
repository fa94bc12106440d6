"""The operator console: static files (HTML, CSS, ES modules) served at ``/console/``.

The files load without the API token (they hold no data); every data call the page makes goes
to the ``/v1`` API with the token a person pastes in, so the console has no powers the API does
not have. Only the files shipped in ``static/`` are served, each with a strict
Content-Security-Policy (no inline script or style) and an ETag, revalidated on every load.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from aiohttp import web

from ratesvc.api.middlewares import add_route
from ratesvc.api.problems import problem_response
from ratesvc.errors import NotFound

STATIC = Path(__file__).parent / "static"
PREFIX = "/console/"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # No build step, so no fingerprinted names: the browser keeps a copy but asks every time.
    "Cache-Control": "no-cache",
}


class _File:
    __slots__ = ("body", "content_type", "etag")

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


@cache
def _files() -> dict[str, _File]:
    """Every servable file by its path under ``/console/``, read once (on the first request)."""
    files: dict[str, _File] = {}
    for path in sorted(STATIC.rglob("*")):
        content_type = _TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            files[path.relative_to(STATIC).as_posix()] = _File(path.read_bytes(), content_type)
    return files


async def console_file(request: web.Request) -> web.Response:
    name = request.match_info.get("path", "") or "index.html"
    file = _files().get(name)
    if file is None:  # a problem like any 404, with the console's headers too
        response = problem_response(NotFound(f"no console file {name!r}"), None)
        response.headers.update({k: v for k, v in _HEADERS.items() if k != "Cache-Control"})
        return response
    headers = {**_HEADERS, "ETag": file.etag}
    if file.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=file.body, headers={**headers, "Content-Type": file.content_type})


async def console_redirect(_request: web.Request) -> web.Response:
    # answered, not raised: the edge would hand a raised redirect back as a return
    return web.Response(status=308, headers={**_HEADERS, "Location": PREFIX})


def setup_console(app: web.Application) -> None:
    """Serve the console at ``/console/`` (``/console`` redirects there). No token needed."""
    add_route(app, "GET", "/console", console_redirect, allow_head=True)
    add_route(app, "GET", PREFIX, console_file, allow_head=True)
    add_route(app, "GET", PREFIX + "{path:.+}", console_file, allow_head=True)
