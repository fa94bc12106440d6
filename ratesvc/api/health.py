"""Operations routes without auth: liveness, readiness, metrics."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec
from aiohttp import web

from ratesvc import keys

_encoder = msgspec.json.Encoder()


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    checks: dict[str, str]


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


async def healthz(_request: web.Request) -> web.Response:
    """200 while the process serves."""
    return _json(Health(status="ok"))


def _data_dir_writable(data_dir: Path) -> str:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".readyz-{os.getpid()}"
        with probe.open("wb") as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        return f"error: {data_dir} is not writable ({exc.strerror})"
    return "ok"


async def _ledger_writable(request: web.Request) -> str:
    ledger = request.app[keys.LEDGER]
    try:
        await ledger.writable()
    except Exception as exc:
        return f"error: {exc}"
    return f"ok (schema {await ledger.version()})"


async def readyz(request: web.Request) -> web.Response:
    """200 when the configuration is loaded and the data directory and ledger are writable."""
    settings = request.app[keys.SETTINGS]
    checks = {
        "config": f"ok ({len(settings.accounts)} account(s))",
        "data_dir": await asyncio.to_thread(_data_dir_writable, settings.data_dir),
        "ledger": await _ledger_writable(request),
    }
    ready = all(value.startswith("ok") for value in checks.values())
    return _json(
        Readiness(status="ready" if ready else "not_ready", checks=checks), 200 if ready else 503
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[keys.METRICS].exposition()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")
