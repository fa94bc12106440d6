"""``POST /v1/rates`` (rate-shop a shipment) and ``GET /v1/quotes/{quote_id}``."""

from __future__ import annotations

import asyncio
import datetime as dt

import msgspec
from aiohttp import web

from ratesvc import keys
from ratesvc.api.middlewares import current_account
from ratesvc.api.problems import decode_json, read_json
from ratesvc.errors import InvalidRequest, NotFound, QuoteExpired
from ratesvc.models import RatesRequest

_encoder = msgspec.json.Encoder()


def _json(body: object) -> web.Response:
    return web.Response(body=_encoder.encode(body), content_type="application/json")


async def post_rates(request: web.Request) -> web.Response:
    services = current_account(request)
    account = services.account
    raw = await read_json(request)
    catalog_version = services.catalog.version
    replay = request.app[keys.REPLAY]
    replayed = replay.replay(account.name, raw, catalog_version)
    if replayed is not None:
        return web.Response(body=replayed, content_type="application/json")
    body = decode_json(raw, RatesRequest)
    if body.shipment is None:
        raise InvalidRequest.field(
            "sale_id", "rating a Cin7 Core sale is not available in this version; send shipment"
        )
    deadline = asyncio.get_running_loop().time() + account.request_deadline_s
    rating = await request.app[keys.RATER].rate(
        services,
        body.shipment,
        carriers=body.carriers,
        service_codes=body.services,
        max_age_s=body.max_age_s,
        deadline=deadline,
    )
    answer = _encoder.encode(rating.response)
    if rating.replayable:
        replay.keep(
            account.name, raw, answer, rating.batch,
            fresh_until=rating.fresh_until,
            catalog_version=catalog_version,
        )  # fmt: skip
    return web.Response(body=answer, content_type="application/json")


async def get_quote(request: web.Request) -> web.Response:
    services = current_account(request)
    quote_id = request.match_info["quote_id"]
    stored = request.app[keys.RATER].stored(quote_id)
    if stored is None or stored.account != services.account.name:
        raise NotFound(f"no quote {quote_id}")
    if stored.expires_at <= dt.datetime.now(dt.UTC):
        raise QuoteExpired(f"quote {quote_id} expired at {stored.expires_at.isoformat()}")
    return _json(stored)
