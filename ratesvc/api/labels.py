"""``/v1/labels``: buy (exactly once), read, list, download, void."""

from __future__ import annotations

import msgspec
from aiohttp import web

from ratesvc import keys
from ratesvc.api.middlewares import current_account
from ratesvc.api.paging import list_query
from ratesvc.api.problems import decode_body
from ratesvc.errors import InvalidRequest
from ratesvc.labels import LabelList, LabelsRequest, LabelStatus

_encoder = msgspec.json.Encoder()
_STATUSES = tuple(LabelStatus)


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


async def post_label(request: web.Request) -> web.Response:
    services = current_account(request)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidRequest.field("Idempotency-Key", "must be 1 to 255 characters")
    body = await decode_body(request, LabelsRequest)
    label, created = await request.app[keys.LABELS].buy(services, body, key)
    return _json(label, 201 if created else 200)


async def get_label(request: web.Request) -> web.Response:
    services = current_account(request)
    label = await request.app[keys.LABELS].view(
        request.match_info["label_id"], services.account.name
    )
    return _json(label)


async def list_labels(request: web.Request) -> web.Response:
    services = current_account(request)
    query = request.query
    status, limit = list_query(query, filters=("sale_id",), statuses=_STATUSES)
    labels, cursor = await request.app[keys.LABELS].page(
        services.account.name, sale_id=query.get("sale_id"), status=status,
        limit=limit, cursor=query.get("cursor"),
    )  # fmt: skip
    return _json(LabelList(labels=labels, next_cursor=cursor))


async def get_label_pdf(request: web.Request) -> web.Response:
    services = current_account(request)
    raw_n = request.match_info["n"]
    if not raw_n.isdigit():
        raise InvalidRequest.field("n", "must be a package number (1, 2, ...)")
    pdf = await request.app[keys.LABELS].pdf(
        request.match_info["label_id"], services.account.name, int(raw_n)
    )
    return web.Response(body=pdf, content_type="application/pdf")


async def void_label(request: web.Request) -> web.Response:
    services = current_account(request)
    label = await request.app[keys.LABELS].void(services, request.match_info["label_id"])
    return _json(label)
