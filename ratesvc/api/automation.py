"""``GET /v1/automation/events``: what webhooks and the poller brought, and what became of it."""

from __future__ import annotations

import msgspec
from aiohttp import web

from ratesvc import keys
from ratesvc.api.middlewares import current_account
from ratesvc.automation.events import EVENT_STATUSES, EventList, event_view
from ratesvc.errors import InvalidRequest

_encoder = msgspec.json.Encoder()


async def list_events(request: web.Request) -> web.Response:
    services = current_account(request)
    query = request.query
    unknown = set(query) - {"status", "sale_id", "limit", "cursor"}
    if unknown:
        raise InvalidRequest.field(sorted(unknown)[0], "is not a known query parameter")
    status = query.get("status")
    if status is not None and status not in EVENT_STATUSES:
        raise InvalidRequest.field("status", f"must be one of {', '.join(EVENT_STATUSES)}")
    raw_limit = query.get("limit", "50")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 200:
        raise InvalidRequest.field("limit", "must be a whole number from 1 to 200")
    limit = int(raw_limit)
    rows = await request.app[keys.LEDGER].events(
        services.account.name, status=status, sale_id=query.get("sale_id"),
        after=query.get("cursor"), limit=limit + 1,
    )  # fmt: skip
    page = EventList(
        events=[event_view(row) for row in rows[:limit]],
        next_cursor=rows[limit - 1].event_id if len(rows) > limit else None,
    )
    return web.Response(body=_encoder.encode(page), content_type="application/json")
