"""``GET /v1/sales?ready=true``: the packed sales waiting at the bench; ``GET /v1/status``: what
an operator watches. The logic is in :mod:`ratesvc.operator`."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from ratesvc import keys
from ratesvc.api.middlewares import current_account
from ratesvc.api.paging import sales_query
from ratesvc.operator import account_status
from ratesvc.storage.probes import backend_states

_encoder = msgspec.json.Encoder()


def _json(body: object) -> web.Response:
    return web.Response(body=_encoder.encode(body), content_type="application/json")


async def list_sales(request: web.Request) -> web.Response:
    services = current_account(request)
    query = sales_query(request.query)
    deadline = asyncio.get_running_loop().time() + services.account.request_deadline_s
    page = await request.app[keys.READY_SALES].page(
        services, search=query.search, limit=query.limit, after=query.after, deadline=deadline
    )
    return _json(page)


# The command that subscribes Cin7 Core names this service's public address, which the service
# cannot know (a proxy, TLS, a Host header anyone can set): the person fills it in.
PUBLIC_URL_PLACEHOLDER = "https://RATESVC-PUBLIC-ADDRESS"


async def get_status(request: web.Request) -> web.Response:
    services = current_account(request)
    app = request.app
    backends = await backend_states(app[keys.LEDGER], app[keys.REDIS], app[keys.SETTINGS])
    status = await account_status(
        services, app[keys.LEDGER], app[keys.WEBHOOK_WATCH], base_url=PUBLIC_URL_PLACEHOLDER,
        backends=backends,
    )  # fmt: skip
    return _json(status)
