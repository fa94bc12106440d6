"""What the OpenAPI document says beyond the Structs: parameters, enums, cross-field rules,
the webhook's credentials and body, and examples. The route table (:mod:`.routes`) uses these.

Each rule here mirrors a check in the code (named next to it), so a client generated from the
document and the service refuse the same requests.
"""

from __future__ import annotations

from typing import Any

from ratesvc.api.openapi import Extras, Param
from ratesvc.api.params import (
    EVENT_CURSOR,
    FILTER_MAX,
    IDEMPOTENCY_KEY_MAX,
    LABEL_CURSOR,
    LIMIT_DEFAULT,
    LIMIT_MAX,
    SALES_CURSOR,
    SALES_LIMIT_DEFAULT,
    SALES_LIMIT_MAX,
    SEARCH_MAX,
)
from ratesvc.automation.events import EVENT_STATUSES, MAX_ID
from ratesvc.labels.lifecycle import LabelStatus, PackageState, WriteBackState
from ratesvc.labels.models import LabelsRequest
from ratesvc.models import RatesRequest

LABEL_STATUSES = tuple(LabelStatus)
PACKAGE_STATES = tuple(PackageState)
WRITE_BACK_STATES = tuple(WriteBackState)


def list_params(statuses: tuple[str, ...], cursor: str) -> tuple[Param, ...]:
    """The query of a list route (:func:`ratesvc.api.paging.list_query`)."""
    return (
        Param("status", "query", {"type": "string", "enum": list(statuses)}, "Only this status"),
        Param("sale_id", "query", {"type": "string", "minLength": 1, "maxLength": FILTER_MAX,
                                   "pattern": r"\S"}, "Only this Cin7 Core sale"),
        Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX,
                                 "default": LIMIT_DEFAULT}, "Page size", example=20),
        Param("cursor", "query", {"type": "string", "pattern": cursor},
              "`next_cursor` of the previous page"),
    )  # fmt: skip


# ratesvc.api.paging.sales_query
SALES_LIST_PARAMS = (
    Param("ready", "query", {"type": "string", "enum": ["true"]},
          "Must be `true`: the packed, unshipped sales (the only list served)", required=True,
          example="true"),
    Param("search", "query", {"type": "string", "maxLength": SEARCH_MAX},
          "Case-insensitive part of the order number or the customer (empty: all)",
          example="SO-10"),
    Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": SALES_LIMIT_MAX,
                             "default": SALES_LIMIT_DEFAULT}, "Page size", example=25),
    Param("cursor", "query", {"type": "string", "pattern": SALES_CURSOR},
          "`next_cursor` of the previous page"),
)  # fmt: skip

IDEMPOTENCY_KEY = Param(
    "Idempotency-Key", "header",
    {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX},
    "The same key and body buy once: a retry answers 200 with the same label",
    example="order-1001-attempt",
)  # fmt: skip

# Cin7 Core's webhook payload, as ratesvc.automation.events.parse_event reads it: the keys are
# matched case-insensitively under several spellings; these are the ones Cin7 Core sends.
_ID_TEXT = {"type": ["string", "null"], "description": f"At most {MAX_ID} characters"}
# Read only when the spellings before it are absent, so no type is promised for these.
_OTHER_TEXT = {"description": "Text: read when the key above it is absent or empty"}
WEBHOOK_EVENT: dict[str, Any] = {
    "title": "Cin7WebhookEvent",
    "description": "A Cin7 Core webhook delivery: an event type and the sale (or task) it is "
    "about. Keys are matched case-insensitively; other keys are ignored.",
    "type": "object",
    "properties": {
        "EventType": {"type": "string", "pattern": "^[A-Za-z]+/[A-Za-z]+$",
                      "examples": ["Sale/PackAuthorised"]},
        "SaleID": _ID_TEXT, "TaskID": _ID_TEXT, "SaleTaskID": _OTHER_TEXT,
        "SaleOrderNumber": _ID_TEXT, "OrderNumber": _OTHER_TEXT,
    },
    "required": ["EventType"],
}  # fmt: skip
WEBHOOK_SCHEMES = {
    "webhookBearer": {"type": "http", "scheme": "bearer",
                      "description": "The account's webhook token (RATESVC_CIN7_WEBHOOK_TOKEN)"},
    "webhookBasic": {"type": "http", "scheme": "basic",
                     "description": "The account's webhook user name and password"},
    "webhookHeader": {"type": "apiKey", "in": "header", "name": "X-Webhook-Key",
                      "description": "The account's webhook header (its name is configured "
                      "per account; X-Webhook-Key is an example)"},
}  # fmt: skip

_TEXT = {"type": "string"}
_NULL = {"type": "null"}
_OBJECT = {"type": "object"}
# RatesRequest.__post_init__: exactly one of sale_id or shipment; task_id only with sale_id.
_RATES_RULE = {"oneOf": [
    {"title": "for a sale", "required": ["sale_id"],
     "properties": {"sale_id": _TEXT, "shipment": _NULL}},
    {"title": "for a shipment", "required": ["shipment"],
     "properties": {"shipment": _OBJECT, "sale_id": _NULL, "task_id": _NULL}},
]}  # fmt: skip
# LabelsRequest.__post_init__: quote_id alone, or carrier_code + service_code with exactly one
# of sale_id or shipment (task_id only with sale_id).
_BY_CODES = {"quote_id": _NULL, "carrier_code": _TEXT, "service_code": _TEXT}
_LABELS_RULE = {"oneOf": [
    {"title": "a quote", "required": ["quote_id"],
     "properties": {"quote_id": _TEXT, "carrier_code": _NULL, "service_code": _NULL,
                    "package_code": _NULL, "sale_id": _NULL, "task_id": _NULL,
                    "shipment": _NULL}},
    {"title": "a sale by carrier and service",
     "required": ["carrier_code", "service_code", "sale_id"],
     "properties": {**_BY_CODES, "sale_id": _TEXT, "shipment": _NULL}},
    {"title": "a shipment by carrier and service",
     "required": ["carrier_code", "service_code", "shipment"],
     "properties": {**_BY_CODES, "shipment": _OBJECT, "sale_id": _NULL, "task_id": _NULL}},
]}  # fmt: skip

EXTRAS = Extras(
    enums={"Label.status": LABEL_STATUSES, "LabelPackage.state": PACKAGE_STATES,
           "WriteBack.state": WRITE_BACK_STATES, "AutomationEvent.status": EVENT_STATUSES,
           "WebhookReceipt.status": EVENT_STATUSES, "ReadySale.label_status": LABEL_STATUSES,
           "SaleAutomation.status": EVENT_STATUSES},
    rules={RatesRequest: _RATES_RULE, LabelsRequest: _LABELS_RULE},
    schemes=WEBHOOK_SCHEMES,
)  # fmt: skip

_SHIP_TO = {"name": "A. Customer", "street1": "350 5th Ave", "city": "New York", "state": "NY",
            "postal_code": "10118", "country": "US", "residential": True}  # fmt: skip
_BOX = {"weight": {"value": 2.5, "unit": "lb"}, "box": "Box 1",
        "dimensions": {"length": 12, "width": 9, "height": 4, "unit": "in"}}  # fmt: skip
_SHIPMENT = {"ship_to": _SHIP_TO, "packages": [_BOX]}
RATES_EXAMPLE = {"shipment": _SHIPMENT, "carriers": ["ups", "fedex"]}
LABELS_EXAMPLE = {"carrier_code": "ups", "service_code": "ups_ground", "shipment": _SHIPMENT,
                  "test_label": True}  # fmt: skip
WEBHOOK_EXAMPLE = {"EventType": "Sale/PackAuthorised", "SaleID": "sale-simple",
                   "TaskID": "task-simple-1"}  # fmt: skip
EVENT_CURSOR_PARAMS = list_params(EVENT_STATUSES, EVENT_CURSOR)
LABEL_LIST_PARAMS = (
    *list_params(LABEL_STATUSES, LABEL_CURSOR),
    Param("search", "query", {"type": "string", "maxLength": FILTER_MAX},
          "Case-insensitive part of the sale's order number, the sale id or a tracking number "
          "(empty: all)", example="SO-10"),
)  # fmt: skip
