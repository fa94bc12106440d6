"""``GET /v1/automation/events``: what webhooks and the poller brought, and what became of it;
``POST /v1/automation/events/{event_id}/retry``: a person puts one back in the queue."""

from __future__ import annotations

import msgspec
from aiohttp import web

from ratesvc import keys
from ratesvc.api.middlewares import current_account
from ratesvc.api.paging import list_query
from ratesvc.api.params import EVENT_CURSOR
from ratesvc.automation.events import EVENT_STATUSES, EventList, event_view

_encoder = msgspec.json.Encoder()


async def list_events(request: web.Request) -> web.Response:
    account = current_account(request).account.name
    ledger = request.app[keys.LEDGER]
    query = await list_query(
        request.query, statuses=EVENT_STATUSES, account=account, cursor_pattern=EVENT_CURSOR,
        lookup=ledger.event,
    )  # fmt: skip
    limit = query.limit
    rows = await ledger.events(
        account, status=query.status, sale_id=query.sale_id, after=query.cursor, limit=limit + 1
    )
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
