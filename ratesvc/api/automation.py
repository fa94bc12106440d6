"""``GET /v1/automation/events``: what webhooks and the poller brought, and what became of it;
``POST /v1/automation/events/{event_id}/retry``: a person puts one back in the queue."""

from __future__ import annotations

import msgspec
from aiohttp import web

from ratesvc import keys
from ratesvc.api.middlewares import current_account
from ratesvc.api.paging import list_query
from ratesvc.automation.events import EVENT_STATUSES, EventList, event_view

_encoder = msgspec.json.Encoder()


async def list_events(request: web.Request) -> web.Response:
    services = current_account(request)
    query = request.query
    status, limit = list_query(query, filters=("sale_id",), statuses=EVENT_STATUSES)
    rows = await request.app[keys.LEDGER].events(
        services.account.name, status=status, sale_id=query.get("sale_id"),
        after=query.get("cursor"), limit=limit + 1,
    )  # fmt: skip
    page = EventList(
        events=[event_view(row) for row in rows[:limit]],
        next_cursor=rows[limit - 1].event_id if len(rows) > limit else None,
    )
    return web.Response(body=_encoder.encode(page), content_type="application/json")


async def retry_event(request: web.Request) -> web.Response:
    """200 with the event, back in the queue; 404 unknown or another account's; 409
    ``event_not_retryable`` unless it is in ``attention`` or ``failed`` and not being processed."""
    services = current_account(request)
    automation = request.app[keys.AUTOMATION]
    row = await automation.retry(services.account.name, request.match_info["event_id"])
    return web.Response(body=_encoder.encode(event_view(row)), content_type="application/json")
