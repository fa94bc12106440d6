"""Wiring only: which handler serves which path. The OpenAPI document is built from this table."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from aiohttp import web

from ratesvc.api import automation, carriers, health, labels, operator, rates, webhooks
from ratesvc.api.document import (
    EVENT_CURSOR_PARAMS,
    EXTRAS,
    IDEMPOTENCY_KEY,
    LABEL_LIST_PARAMS,
    LABELS_EXAMPLE,
    RATES_EXAMPLE,
    SALES_LIST_PARAMS,
    WEBHOOK_EVENT,
    WEBHOOK_EXAMPLE,
    WEBHOOK_SCHEMES,
)
from ratesvc.api.middlewares import add_route
from ratesvc.api.openapi import Route, build_openapi
from ratesvc.automation.events import AutomationEvent, EventList, WebhookReceipt
from ratesvc.labels import Label, LabelList, LabelsRequest
from ratesvc.models import CarriersResponse, RatesRequest, RatesResponse
from ratesvc.operator import ReadySaleList, Status
from ratesvc.quotes import StoredQuote


async def openapi(_request: web.Request) -> web.Response:
    return web.Response(body=_openapi_bytes(), content_type="application/json")


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", health.healthz, "Liveness", health.Health, auth=False,
          tags=("operations",)),
    Route("GET", "/readyz", health.readyz,
          "Readiness: config loaded, data directory writable, each configured backend (the "
          "ledger; Redis when RATESVC_REDIS_URL is set) answering within a second",
          health.Readiness, also=((503, "Not ready: `failed` names the checks that failed "
          "(`ledger`, `redis`, `data_dir`), `checks` says why"),), auth=False,
          tags=("operations",)),
    Route("GET", "/metrics", health.metrics, "Prometheus metrics", auth=False,
          content_type="text/plain", tags=("operations",)),
    Route("GET", "/openapi.json", openapi, "This document", auth=False, tags=("operations",)),
    Route("GET", "/v1/carriers", carriers.list_carriers,
          "Connected carriers with their services and package types (cached)",
          CarriersResponse, errors=(502, 503, 504), tags=("carriers",)),
    Route("POST", "/v1/rates", rates.post_rates,
          "Rate-shop one shipment across the connected carriers concurrently", RatesResponse,
          request=RatesRequest, request_example=RATES_EXAMPLE,
          errors=(404, 409, 502, 503, 504), tags=("rates",)),
    Route("GET", "/v1/quotes/{quote_id}", rates.get_quote,
          "A quote handed out by POST /v1/rates, with the shipment it is for", StoredQuote,
          errors=(404, 410, 503), tags=("rates",)),
    Route("POST", "/v1/labels", labels.post_label,
          "Buy labels, one per package, exactly once (Idempotency-Key header)", Label,
          request=LabelsRequest, request_example=LABELS_EXAMPLE, status=201,
          also=((200, "An idempotent replay: the label bought before, nothing bought now"),),
          errors=(404, 409, 410, 502, 503, 504), params=(IDEMPOTENCY_KEY,), ledger=True,
          tags=("labels",)),
    Route("GET", "/v1/labels", labels.list_labels, "Labels, newest first", LabelList,
          errors=(422,), params=LABEL_LIST_PARAMS, ledger=True, tags=("labels",)),
    Route("GET", "/v1/labels/{label_id}", labels.get_label, "One label", Label, errors=(404,),
          ledger=True, tags=("labels",)),
    Route("GET", "/v1/labels/{label_id}/packages/{n}/label.pdf", labels.get_label_pdf,
          "A package's label PDF", errors=(404, 422), content_type="application/pdf",
          ledger=True, tags=("labels",)),
    Route("GET", "/v1/labels/{label_id}/label.pdf", labels.get_label_print,
          "Every bought package's label in one PDF, in box order (print a whole sale at once); "
          "404 when a package's PDF is not here, 409 already_voided for a voided label, 409 "
          "reconciling while a box is still being bought",
          errors=(404, 409), content_type="application/pdf", ledger=True, tags=("labels",)),
    Route("GET", "/v1/labels/{label_id}/packages/{n}/customs.pdf", labels.get_customs_pdf,
          "A package's customs form (international labels, when ShipStation returned one)",
          errors=(404, 422), content_type="application/pdf", ledger=True, tags=("labels",)),
    Route("POST", "/v1/labels/{label_id}/void", labels.void_label,
          "Void every package of a label", Label, errors=(404, 409, 502, 503, 504),
          ledger=True, tags=("labels",)),
    Route("POST", "/v1/labels/{label_id}/write-back/retry", labels.retry_write_back,
          "Try the label's waiting Cin7 Core write-back (or a voided label's tracking "
          "correction) now instead of after its back-off; the label, unchanged when nothing "
          "is waiting", Label, errors=(404,), ledger=True, tags=("labels",)),
    Route("POST", "/v1/webhooks/cin7/{account}", webhooks.cin7_webhook,
          "Cin7 Core webhook target: records the event (202; a repeat answers 200) and ships "
          "packed sales in the background by the account's rule. Authenticated with the account's "
          "webhook credential (bearer, basic or a custom header), not an API token",
          WebhookReceipt, request_schema=WEBHOOK_EVENT, request_example=WEBHOOK_EXAMPLE,
          status=202, also=((200, "A repeat delivery of an event already recorded"),),
          auth=False, security=tuple(WEBHOOK_SCHEMES), ledger=True, tags=("automation",)),
    Route("GET", "/v1/automation/events", automation.list_events,
          "Automation events (webhooks and the poller), newest first, with their status and "
          "reason", EventList, errors=(422,), params=EVENT_CURSOR_PARAMS, ledger=True,
          tags=("automation",)),
    Route("POST", "/v1/automation/events/{event_id}/retry", automation.retry_event,
          "Put an event in attention or failed back in the queue, due now, its attempts reset "
          "(409 event_not_retryable otherwise)", AutomationEvent, errors=(404, 409),
          ledger=True, tags=("automation",)),
    Route("GET", "/v1/sales", operator.list_sales,
          "Packed, unshipped Cin7 Core sales (ReadyForShipping), with their boxes, labels and "
          "automation state; a sale not read yet is `pending`", ReadySaleList,
          errors=(422, 502, 503, 504), params=SALES_LIST_PARAMS, ledger=True, tags=("operator",)),
    Route("GET", "/v1/status", operator.get_status,
          "What an operator watches: upstream budgets, write-back backlog, automation queue, "
          "labels waiting, the Cin7 Core webhook's state (never fails for a down upstream), "
          "each backend (engine, reachable) and the process that answered",
          Status, ledger=True, tags=("operator",)),
)  # fmt: skip


@cache
def _openapi_bytes() -> bytes:
    document: dict[str, Any] = build_openapi(ROUTES, EXTRAS)
    return msgspec.json.encode(document)


def setup_routes(app: web.Application) -> None:
    for route in ROUTES:
        add_route(app, route.method, route.path, route.handler)
