"""``/v1/labels``: buy (exactly once), read, list, download, void, retry the write-back."""

from __future__ import annotations

import msgspec
from aiohttp import web

from ratesvc import keys
from ratesvc.api.document import LABEL_STATUSES
from ratesvc.api.middlewares import current_account
from ratesvc.api.paging import list_query
from ratesvc.api.params import IDEMPOTENCY_KEY_MAX, LABEL_CURSOR, PACKAGE_MAX, is_text, whole_number
from ratesvc.api.problems import decode_body
from ratesvc.errors import InvalidRequest
from ratesvc.labels import LabelList, LabelsRequest

_encoder = msgspec.json.Encoder()


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


async def post_label(request: web.Request) -> web.Response:
    services = current_account(request)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (1 <= len(key) <= IDEMPOTENCY_KEY_MAX and is_text(key)):
        raise InvalidRequest.field(
            "Idempotency-Key", f"must be 1 to {IDEMPOTENCY_KEY_MAX} characters of text"
        )
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
    account = current_account(request).account.name
    query = await list_query(
        request.query, statuses=LABEL_STATUSES, account=account, cursor_pattern=LABEL_CURSOR,
        lookup=request.app[keys.LEDGER].purchase, extra=("search",),
    )  # fmt: skip
    labels, cursor = await request.app[keys.LABELS].page(
        account, sale_id=query.sale_id, status=query.status, limit=query.limit,
        cursor=query.cursor, search=query.search,
    )  # fmt: skip
    return _json(LabelList(labels=labels, next_cursor=cursor))


async def get_label_pdf(request: web.Request) -> web.Response:
    services = current_account(request)
    n = whole_number(request.match_info["n"], name="n", low=1, high=PACKAGE_MAX)
    pdf = await request.app[keys.LABELS].pdf(
        request.match_info["label_id"], services.account.name, n
    )
    return web.Response(body=pdf, content_type="application/pdf")


async def get_label_print(request: web.Request) -> web.Response:
    """Every bought package's label in one PDF, in box order."""
    services = current_account(request)
    labels = request.app[keys.LABELS]
    label_id = request.match_info["label_id"]
    pdf = await labels.printable(label_id, services.account.name)
    return web.Response(
        body=pdf, content_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="labels-{label_id}.pdf"'},
    )  # fmt: skip


async def get_customs_pdf(request: web.Request) -> web.Response:
    services = current_account(request)
    n = whole_number(request.match_info["n"], name="n", low=1, high=PACKAGE_MAX)
    pdf = await request.app[keys.LABELS].pdf(
        request.match_info["label_id"], services.account.name, n, customs=True
    )
    return web.Response(body=pdf, content_type="application/pdf")


async def void_label(request: web.Request) -> web.Response:
    services = current_account(request)
    label = await request.app[keys.LABELS].void(services, request.match_info["label_id"])
    return _json(label)


async def retry_write_back(request: web.Request) -> web.Response:
    services = current_account(request)
    label = await request.app[keys.LABELS].retry_write_back(
        request.match_info["label_id"], services.account.name
    )
    return _json(label)
