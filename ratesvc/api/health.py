"""Operations routes without auth: liveness, readiness, metrics."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec
from aiohttp import web

from ratesvc import keys
from ratesvc.storage.probes import backend_states

_encoder = msgspec.json.Encoder()


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """``checks``: each check's result (``ok ...`` or ``error: ...``); ``failed``: the names of
    those that failed (``config``, ``data_dir``, ``ledger``, ``redis``), empty when ready."""

    status: str
    checks: dict[str, str]
    failed: list[str] = []


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


async def readyz(request: web.Request) -> web.Response:
    """200 when the configuration is loaded, the data directory is writable and every configured
    backend answers in time (the ledger; Redis when ``RATESVC_REDIS_URL`` is set); else 503 with
    the failed checks named in ``failed``."""
    app = request.app
    settings = app[keys.SETTINGS]
    data_dir, backends = await asyncio.gather(
        asyncio.to_thread(_data_dir_writable, settings.data_dir),
        backend_states(app[keys.LEDGER], app[keys.REDIS], settings),
    )
    checks = {"config": f"ok ({len(settings.accounts)} account(s))", "data_dir": data_dir}
    checks.update(
        (backend.name, backend.detail if backend.reachable else f"error: {backend.engine} at "
         f"{backend.location}: {backend.detail.removeprefix('error: ')}")
        for backend in backends
    )  # fmt: skip
    failed = [name for name, value in checks.items() if not value.startswith("ok")]
    return _json(
        Readiness(status="not_ready" if failed else "ready", checks=checks, failed=failed),
        503 if failed else 200,
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[keys.METRICS].exposition()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")
