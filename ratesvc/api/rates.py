"""``POST /v1/rates`` (rate-shop a shipment) and ``GET /v1/quotes/{quote_id}``."""

from __future__ import annotations

import asyncio
import datetime as dt

import msgspec
from aiohttp import web

from ratesvc import keys
from ratesvc.api.middlewares import current_account
from ratesvc.api.problems import decode_json, read_json
from ratesvc.errors import NotFound, QuoteExpired
from ratesvc.models import RatesRequest
from ratesvc.sale_shipments import shipment_for_sale

_encoder = msgspec.json.Encoder()


def _json(body: object) -> web.Response:
    return web.Response(body=_encoder.encode(body), content_type="application/json")


async def post_rates(request: web.Request) -> web.Response:
    services = current_account(request)
    account = services.account
    raw = await read_json(request)
    catalog_version = await services.catalog.current_version()
    replay = request.app[keys.REPLAY]
    replayed = await replay.replay(account.name, raw, catalog_version)
    if replayed is not None:
        return web.Response(body=replayed, content_type="application/json")
    body = decode_json(raw, RatesRequest)
    deadline = asyncio.get_running_loop().time() + account.request_deadline_s
    shipment, sale_id, task_id, defaults = body.shipment, None, None, []
    order_number = None
    if body.sale_id is not None:  # the sale is read again every time: no replay for it
        prepared = await shipment_for_sale(
            services, body.sale_id, body.task_id, deadline=deadline, declare=False
        )
        shipment, defaults = prepared.shipment, prepared.defaults
        sale_id, task_id = prepared.sale.sale_id, prepared.fulfilment.task_id
        order_number = prepared.sale.order_number
    assert shipment is not None  # RatesRequest guarantees one of the two
    rating = await request.app[keys.RATER].rate(
        services,
        shipment,
        carriers=body.carriers,
        service_codes=body.services,
        max_age_s=body.max_age_s,
        deadline=deadline,
        sale_id=sale_id,
        task_id=task_id,
        order_number=order_number,
    )
    response = rating.response
    if defaults:
        response = msgspec.structs.replace(response, defaults=defaults)
    answer = _encoder.encode(response)
    if rating.replayable and sale_id is None:
        await replay.keep(
            account.name, raw, answer, rating.batch,
            fresh_until=rating.fresh_until,
            catalog_version=catalog_version,
        )  # fmt: skip
    return web.Response(body=answer, content_type="application/json")


async def get_quote(request: web.Request) -> web.Response:
    services = current_account(request)
    quote_id = request.match_info["quote_id"]
    stored = await request.app[keys.RATER].stored(quote_id)
    if stored is None or stored.account != services.account.name:
        raise NotFound(f"no quote {quote_id}")
    if stored.expires_at <= dt.datetime.now(dt.UTC):
        raise QuoteExpired(f"quote {quote_id} expired at {stored.expires_at.isoformat()}")
    return _json(stored)
