"""``GET /v1/carriers``: the account's carrier catalogue."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from ratesvc.api.middlewares import current_account

_encoder = msgspec.json.Encoder()


async def list_carriers(request: web.Request) -> web.Response:
    services = current_account(request)
    deadline = asyncio.get_running_loop().time() + services.account.request_deadline_s
    catalog = await services.catalog.get(deadline=deadline)
    return web.Response(body=_encoder.encode(catalog), content_type="application/json")
