"""An in-process emulator of the Cin7 Core API v2, faithful to ``shared/UPSTREAMS.md``.

Two auth headers (403 when wrong); paths case-insensitive; sales with fulfilments whose Ship step
follows Cin7 Core's rules (refused unless Pack is AUTHORISED, refused when Ship is already
AUTHORISED or PARTIALLY AUTHORISED, one line per packed box with unique box names, tracking added
later only by ``PUT`` with ``AddTrackingNumbers``); products in mixed units, some with no weight;
attachments; ``saleList?ReadyForShipping=true``; locations; webhook subscriptions; 60 calls per
window answered, beyond that, in one of the three throttling styles (503, 429, or 400 with text).

Knobs (``knobs`` attribute, or ``PUT /__sandbox/knobs``): latency, error rate, the throttling
style, the window, ``down`` (every call answers 503 "maintenance"), and
``multiple_organisations`` (every call with good credentials answers ``300 Multiple Choices``, as
Cin7 Core does for a user who belongs to several organisations). ``sale_reads`` (an event):
cleared, sale reads wait until it is set. Counters:
``GET /__sandbox/calls``. ``POST /__sandbox/sales/{id}/pack`` authorises a sale's pack.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import itertools
import random
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import msgspec
from aiohttp import web

from ratesvc.sandbox import cin7_data
from ratesvc.sandbox.knobs import FixedWindow, Latency

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_encoder = msgspec.json.Encoder()
_ADMIN = "/__sandbox/"
_INVOICE_FIELDS = ("ProductID", "SKU", "Name", "Quantity", "Price", "Total")
_INVOICE_LINE_EXTRAS = {"Discount": 0, "Tax": 0, "TaxRule": "Tax Exempt", "Account": "4000",
                        "Comment": ""}  # fmt: skip
_INVOICE_KEPT = ("TaskID", "InvoiceNumber", "Status")  # Cin7 Core's, whatever a POST says
_COUNTRY_NAMES = {"US": "United States", "CA": "Canada", "AU": "Australia", "GB": "United Kingdom",
                  "DE": "Germany"}  # fmt: skip


class Cin7Fault(Exception):
    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = [{"ErrorCode": code or status, "Exception": message}]


def _ready(fulfilment: dict[str, Any]) -> bool:
    shipped = fulfilment["Ship"]["Status"] in ("AUTHORISED", "PARTIALLY AUTHORISED")
    return fulfilment["Pack"]["Status"] == "AUTHORISED" and not shipped


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


class Cin7KnobsUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    latency: Latency | None = None
    error_rate: float | None = None
    throttle_style: Literal["503", "429", "400"] | None = None
    rate_limit: int | None = None
    window_s: float | None = None
    down: bool | None = None
    writes_down: bool | None = None
    multiple_organisations: bool | None = None


@dataclass
class Cin7Knobs:
    latency: Latency = field(default_factory=Latency)
    error_rate: float = 0.0
    throttle_style: Literal["503", "429", "400"] = "503"
    rate_limit: int = 60
    window_s: float = 60.0
    down: bool = False
    writes_down: bool = False  # reads work, every write answers 503 (a half-broken Cin7 Core)
    multiple_organisations: bool = False  # the API user belongs to several organisations: 300
    seed: int = 11
    # Cin7 Core retries a failed delivery 6 times (1, 5, 10, 15, 20, 25 min apart), then turns
    # the webhook off. Tests shorten the delays.
    webhook_retry_delays_s: tuple[float, ...] = (60, 300, 600, 900, 1200, 1500)


class Cin7Sandbox:
    """State, knobs and the aiohttp app of one emulated Cin7 Core organisation."""

    def __init__(
        self,
        *,
        account_id: str = "sandbox-account",
        application_key: str = "sandbox-key",
        knobs: Cin7Knobs | None = None,
        seed: bool = True,
    ) -> None:
        self.knobs = knobs or Cin7Knobs()
        self._credentials = (account_id, application_key)
        self.window = FixedWindow(self.knobs.rate_limit, self.knobs.window_s)
        self.calls: Counter[str] = Counter()
        self.throttled = 0
        self.forbidden = 0
        self.sales: dict[str, dict[str, Any]] = {}
        self.products: dict[str, dict[str, Any]] = {}
        self.attachments: dict[str, list[dict[str, Any]]] = {}
        self.invoices: dict[str, list[dict[str, Any]]] = {}
        self.webhooks: list[dict[str, Any]] = []
        # Cleared, every GET /sale waits until it is set again (a sale read still on its way).
        self.sale_reads = asyncio.Event()
        self.sale_reads.set()
        self.writes: deque[tuple[str, str, Any]] = deque(maxlen=1000)  # (method, path, body)
        self._rng = random.Random(self.knobs.seed)
        self._last_stamp = dt.datetime(2026, 1, 1)
        self._ids = itertools.count(1)
        self.deliveries: deque[tuple[str, str, int | None]] = deque(
            maxlen=1000
        )  # url, event, status
        self._session: aiohttp.ClientSession | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        if seed:
            self.seed()
        self.app = self._make_app()

    # --- data ----------------------------------------------------------------------------------

    def seed(self) -> None:
        for product_id, fields in cin7_data.PRODUCTS.items():
            self.products[product_id] = {"ID": product_id, "Type": "Stock", **fields}
        for sale_id, number, customer, address, items, pack, ship in cin7_data.SALES:
            self.add_sale(sale_id, number, customer, address, items, pack=pack, ship=ship)
        # An advanced sale: its first fulfilment shipped, the second packed and waiting.
        self.add_sale("sale-advanced", "SO-1006", "Empire Goods LLC", cin7_data.ADDRESS_NY,
                      [("p-mug", 2, "Box 1")], ship="AUTHORISED")  # fmt: skip
        self.sales["sale-advanced"]["Type"] = "Advanced Sale"
        self.add_fulfilment("sale-advanced", [("p-flour", 1, "Carton A"), ("p-mug", 2, "Carton B")])
        for sale_id, number, customer, address, items, prices, currency in cin7_data.FOREIGN_SALES:
            self.add_sale(sale_id, number, customer, address, items, prices=prices)
            self.sales[sale_id].update(currency)

    def add_sale(
        self,
        sale_id: str,
        number: str,
        customer: str,
        address: dict[str, Any],
        items: list[tuple[str, int, str]],
        *,
        pack: str = "AUTHORISED",
        ship: str = "NOT AVAILABLE",
        prices: dict[str, tuple[float, float]] | None = None,
    ) -> dict[str, Any]:
        """A sale with one fulfilment; ``items`` are (product id, quantity, box name); ``prices``
        (unit price, discount percent) by product, else 10 each, no discount, in USD."""
        lines = [self._order_line(product_id, quantity, *(prices or {}).get(product_id, (10, 0)))
                 for product_id, quantity, _ in items]  # fmt: skip
        picked = [{"ProductID": pid, "SKU": self.products[pid]["SKU"], "Quantity": qty,
                   "Location": "Main Warehouse"} for pid, qty, _ in items]  # fmt: skip
        packed = [{**line, "Box": box} for line, (_, _, box) in zip(picked, items, strict=True)]
        ship_lines = []
        if ship == "AUTHORISED":
            ship_lines = [{"ID": str(uuid.uuid4()), "ShipmentDate": "2026-11-01T00:00:00",
                           "Carrier": "UPS", "Boxes": box, "TrackingNumber": f"1Z999AA10{i:09d}",
                           "TrackingURL": "", "IsShipped": True}
                          for i, box in enumerate(dict.fromkeys(b for *_, b in items))]  # fmt: skip
        sale = {
            "ID": sale_id, "Customer": customer, "Contact": address.get("Contact"),
            "Phone": "+1 512 555 0100", "Email": "orders@example.com",
            "ShippingAddress": dict(address), "Carrier": "UPS Ground", "Location": "Main Warehouse",
            "Status": "PACKED" if pack == "AUTHORISED" else "ORDERED", "Updated": self._stamp(),
            "CustomerCurrency": "USD", "BaseCurrency": "USD", "CurrencyRate": 1,
            "Order": {"SaleOrderNumber": number, "Status": "AUTHORISED", "Lines": lines},
            "Fulfilments": [{
                "TaskID": f"task-{sale_id}", "FulfillmentNumber": 1,
                "Pick": {"Status": "AUTHORISED", "Lines": picked},
                "Pack": {"Status": pack, "Lines": packed if pack != "NOT AVAILABLE" else []},
                "Ship": {"Status": ship, "RequireBy": None, "ShippingAddress": dict(address),
                         "ShippingNotes": "", "Lines": ship_lines},
            }],
        }  # fmt: skip
        self.sales[sale_id] = sale
        # Fields ratesvc does not model are there too: a rewrite must send them back.
        self.invoices[sale_id] = [{
            "TaskID": f"invoice-{sale_id}", "InvoiceNumber": f"INV-{number[3:]}", "Status": "DRAFT",
            "InvoiceDate": "2026-11-29", "InvoiceDueDate": "2026-12-29",
            "Memo": f"Customer PO {number[3:]}-A", "CurrencyConversionRate": 1,
            "BillingAddressLine1": address.get("Line1"), "LinkedFulfillmentNumber": "1",
            "Lines": [{**{k: line[k] for k in _INVOICE_FIELDS}, **_INVOICE_LINE_EXTRAS}
                      for line in lines],
            "AdditionalCharges": [],
        }]  # fmt: skip
        return sale

    def _order_line(
        self, product_id: str, quantity: int, price: float = 10, discount: float = 0
    ) -> dict[str, Any]:
        p = self.products[product_id]
        total = round(price * quantity * (100 - discount) / 100, 2)
        return {
            "ProductID": product_id, "SKU": p["SKU"], "Name": p["Name"], "Quantity": quantity,
            "Price": price, "Discount": discount, "Total": total, "ProductWeight": p["Weight"],
            "WeightUnits": p["WeightUnits"], "ProductLength": p["Length"],
            "ProductWidth": p["Width"], "ProductHeight": p["Height"],
            "DimensionsUnits": p["DimensionsUnits"],
        }  # fmt: skip

    def add_fulfilment(
        self, sale_id: str, items: list[tuple[str, int, str]], *, pack: str = "AUTHORISED"
    ) -> dict[str, Any]:
        """Another fulfilment on a sale (an advanced sale ships in several); products not yet on
        the order are added to its lines."""
        sale = self.sales[sale_id]
        ordered = {line["ProductID"] for line in sale["Order"]["Lines"]}
        for product_id, quantity, _ in items:
            if product_id not in ordered:
                ordered.add(product_id)
                sale["Order"]["Lines"].append(self._order_line(product_id, quantity))
        picked = [{"ProductID": pid, "SKU": self.products[pid]["SKU"], "Quantity": qty,
                   "Location": "Main Warehouse"} for pid, qty, _ in items]  # fmt: skip
        packed = [{**line, "Box": box} for line, (*_, box) in zip(picked, items, strict=True)]
        number = len(sale["Fulfilments"]) + 1
        fulfilment = {
            "TaskID": f"task-{sale_id}-{number}", "FulfillmentNumber": number,
            "Pick": {"Status": "AUTHORISED", "Lines": picked},
            "Pack": {"Status": pack, "Lines": packed},
            "Ship": {"Status": "NOT AVAILABLE", "RequireBy": None, "ShippingNotes": "",
                     "ShippingAddress": dict(sale["ShippingAddress"]), "Lines": []},
        }  # fmt: skip
        sale["Fulfilments"].append(fulfilment)
        sale["Updated"] = self._stamp()
        return fulfilment

    def _stamp(self) -> str:
        """An ``Updated`` stamp, strictly later than every earlier one."""
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        self._last_stamp = max(now, self._last_stamp + dt.timedelta(microseconds=1))
        return self._last_stamp.isoformat(timespec="microseconds")

    def touch(self, sale: dict[str, Any]) -> None:
        sale["Updated"] = self._stamp()

    def fulfilment(self, sale_id: str) -> dict[str, Any]:
        fulfilment: dict[str, Any] = self.sales[sale_id]["Fulfilments"][0]
        return fulfilment

    def authorise_pack(self, sale_id: str) -> None:
        """Authorise the sale's pack and, like Cin7 Core, announce it to the subscribed webhooks
        (delivered in the background when an event loop runs)."""
        fulfilment = self.fulfilment(sale_id)
        fulfilment["Pack"]["Status"] = "AUTHORISED"
        if not fulfilment["Pack"]["Lines"]:
            fulfilment["Pack"]["Lines"] = [
                {**line, "Box": "Box 1"} for line in fulfilment["Pick"]["Lines"]
            ]
        sale = self.sales[sale_id]
        sale["Status"] = "PACKED"
        self.touch(sale)
        self.announce("Sale/PackAuthorised", {
            "SaleID": sale["ID"], "SaleOrderNumber": sale["Order"]["SaleOrderNumber"],
            "TaskID": fulfilment["TaskID"], "CustomerName": sale["Customer"],
        })  # fmt: skip

    def void_sale(self, sale_id: str) -> None:
        """Void the sale and announce ``Sale/Voided`` to the subscribed webhooks."""
        sale = self.sales[sale_id]
        sale["Status"] = "VOIDED"
        self.touch(sale)
        number = sale["Order"]["SaleOrderNumber"]
        self.announce("Sale/Voided", {"SaleID": sale["ID"], "SaleOrderNumber": number})

    def summary(self, sale_id: str) -> dict[str, Any]:
        """What a person sees on the sale: each fulfilment's Pack/Ship and tracking, attachments."""
        sale = self.sales[sale_id]
        return {
            "SaleID": sale["ID"], "OrderNumber": sale["Order"]["SaleOrderNumber"],
            "Status": sale["Status"],
            "Fulfilments": [
                {"TaskID": f["TaskID"], "Pack": f["Pack"]["Status"], "Ship": f["Ship"]["Status"],
                 "Tracking": [{"Box": line["Boxes"], "Carrier": line["Carrier"],
                               "TrackingNumber": line["TrackingNumber"]}
                              for line in f["Ship"]["Lines"]]}
                for f in sale["Fulfilments"]
            ],
            "Attachments": [a["FileName"] for a in self.attachments.get(sale["ID"], [])],
        }  # fmt: skip

    def announce(self, event: str, payload: dict[str, Any]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for hook in self.webhooks:
            if hook.get("Type") == event and hook.get("IsActive", True):
                task = loop.create_task(self._deliver(hook, {**payload, "EventType": event}))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, hook: dict[str, Any], payload: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {str(h["Key"]): str(h["Value"]) for h in hook.get("ExternalHeaders") or []}
        auth = None
        kind = hook.get("ExternalAuthorizationType", "noauth")
        if kind == "bearerauth":
            headers["Authorization"] = f"Bearer {hook.get('ExternalBearerToken', '')}"
        elif kind == "basicauth":
            auth = aiohttp.BasicAuth(
                hook.get("ExternalUserName", ""), hook.get("ExternalPassword", "")
            )
        for delay in (0.0, *self.knobs.webhook_retry_delays_s):
            await asyncio.sleep(delay)
            status: int | None = None
            try:
                async with self._session.post(
                    hook["ExternalURL"],
                    json=payload,
                    headers=headers,
                    auth=auth,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = None
            self.deliveries.append((hook["ExternalURL"], payload["EventType"], status))
            if status is not None and 200 <= status < 300:
                return
        hook["IsActive"] = False  # six failed retries: Cin7 Core silently deactivates the hook

    async def close(self) -> None:
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def apply_limit(self, limit: int) -> None:
        """Allow ``limit`` calls per window from now on (a tighter Cin7 Core)."""
        self.knobs.rate_limit = limit
        self.window.reconfigure(limit=limit)

    def counters(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "throttled": self.throttled, "forbidden": self.forbidden,
                "attachments": {k: len(v) for k, v in self.attachments.items()}}  # fmt: skip

    # --- the app -------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.on_cleanup.append(self._on_cleanup)
        app.router.add_put(_ADMIN + "knobs", self._put_knobs)
        app.router.add_get(_ADMIN + "calls", self._get_calls)
        app.router.add_post(_ADMIN + "sales/{sale_id}/pack", self._post_pack)
        app.router.add_post(_ADMIN + "sales/{sale_id}/void", self._post_void)
        app.router.add_get(_ADMIN + "sales/{sale_id}", self._get_summary)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(_ADMIN):
            return await handler(request)
        path = "/" + request.path.lower().strip("/").removeprefix("externalapi/v2/")
        self.calls[f"{request.method} {path}"] += 1
        headers = request.headers
        if (
            headers.get("api-auth-accountid"),
            headers.get("api-auth-applicationkey"),
        ) != self._credentials:
            self.forbidden += 1
            return _json([{"ErrorCode": 403, "Exception": "Incorrect credentials!"}], 403)
        if self.knobs.multiple_organisations:
            return _json([{"ErrorCode": 300, "Exception": "Multiple Choices"}], 300)
        if self.knobs.down or (self.knobs.writes_down and request.method != "GET"):
            return _json([{"ErrorCode": 503, "Exception": "Service is under maintenance"}], 503)
        allowed, _ = self.window.admit()
        if not allowed:
            self.throttled += 1
            return self._throttle_answer()
        await asyncio.sleep(self.knobs.latency.sample(self._rng))
        if self._rng.random() < self.knobs.error_rate:
            return _json([{"ErrorCode": 500, "Exception": "Internal server error"}], 500)
        try:
            return await handler(request)
        except Cin7Fault as fault:
            return _json(fault.body, fault.status)

    def _throttle_answer(self) -> web.Response:
        style = self.knobs.throttle_style
        if style == "429":
            return _json([{"ErrorCode": 429, "Exception": "Too many requests"}], 429)
        if style == "400":
            text = "You have reached 60 calls per 60 seconds API limit."
            return _json([{"ErrorCode": 400, "Exception": text}], 400)
        return web.Response(text="You reached 60 calls per minute API limit", status=503)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.path.lower().strip("/").removeprefix("externalapi/v2/")
        routes: dict[tuple[str, str], Handler] = {
            ("GET", "/sale"): self._get_sale,
            ("GET", "/product"): self._get_product,
            ("GET", "/salelist"): self._get_sale_list,
            ("GET", "/ref/location"): self._get_locations,
            ("POST", "/sale/fulfilment/ship"): self._post_ship,
            ("PUT", "/sale/fulfilment/ship"): self._put_ship,
            ("POST", "/sale/attachment"): self._post_attachment,
            ("GET", "/sale/attachment"): self._get_attachments,
            ("GET", "/sale/invoice"): self._get_invoices,
            ("POST", "/sale/invoice"): self._post_invoice,
            ("GET", "/webhooks"): self._get_webhooks,
            ("POST", "/webhooks"): self._post_webhook,
            ("PUT", "/webhooks"): self._put_webhook,
        }
        handler = routes.get((request.method, path))
        if handler is None:
            raise Cin7Fault(404, f"Resource {request.method} {path} not found")
        return await handler(request)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as exc:
            raise Cin7Fault(400, "Request body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise Cin7Fault(400, "Request body must be an object")
        self.writes.append((request.method, request.path.lower(), body))
        return body

    def _sale(self, sale_id: str | None) -> dict[str, Any]:
        for key, sale in self.sales.items():
            if sale_id and key.lower() == sale_id.lower():
                return sale
        raise Cin7Fault(400, f"Sale with ID {sale_id} not found", code=404)

    async def _get_sale(self, request: web.Request) -> web.Response:
        await self.sale_reads.wait()
        sale = copy.deepcopy(self._sale(request.query.get("ID")))
        if request.query.get("CountryFormat", "").lower() != "code2":
            for address in (
                sale["ShippingAddress"],
                sale["Fulfilments"][0]["Ship"]["ShippingAddress"],
            ):
                address["Country"] = _COUNTRY_NAMES.get(address["Country"], address["Country"])
        sale["Attachments"] = self.attachments.get(sale["ID"], [])
        return _json(sale)

    async def _get_product(self, request: web.Request) -> web.Response:
        product = self.products.get(request.query.get("ID", ""))
        return _json({"Total": int(product is not None), "Page": 1,
                      "Products": [product] if product else []})  # fmt: skip

    async def _get_sale_list(self, request: web.Request) -> web.Response:
        ready = request.query.get("ReadyForShipping", "").lower() == "true"
        page = max(1, int(request.query.get("Page", "1")))
        limit = min(1000, max(1, int(request.query.get("Limit", "100"))))
        items = [
            {"SaleID": s["ID"], "OrderNumber": s["Order"]["SaleOrderNumber"], "Status": s["Status"],
             "Customer": s["Customer"], "Updated": s["Updated"]}
            for s in self.sales.values()
            if not ready or any(_ready(f) for f in s["Fulfilments"])
        ]  # fmt: skip
        return _json({"Total": len(items), "Page": page,
                      "SaleList": items[(page - 1) * limit : page * limit]})  # fmt: skip

    async def _get_locations(self, _request: web.Request) -> web.Response:
        return _json(
            {"Total": len(cin7_data.LOCATIONS), "Page": 1, "LocationList": cin7_data.LOCATIONS}
        )

    def _task(self, task_id: object) -> dict[str, Any]:
        for sale in self.sales.values():
            for fulfilment in sale["Fulfilments"]:
                if isinstance(task_id, str) and fulfilment["TaskID"].lower() == task_id.lower():
                    fulfilment_dict: dict[str, Any] = fulfilment
                    return fulfilment_dict
        raise Cin7Fault(400, f"Fulfilment task {task_id} not found", code=404)

    def _touch_task(self, fulfilment: dict[str, Any]) -> None:
        for sale in self.sales.values():
            if any(f is fulfilment for f in sale["Fulfilments"]):
                self.touch(sale)

    async def _post_ship(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        fulfilment = self._task(body.get("TaskID"))
        if fulfilment["Pack"]["Status"] != "AUTHORISED":
            raise Cin7Fault(400, "Ship cannot be created: Pack is not authorised")
        if fulfilment["Ship"]["Status"] in ("AUTHORISED", "PARTIALLY AUTHORISED"):
            raise Cin7Fault(400, "Ship is already authorised")
        packed_boxes = {line["Box"] for line in fulfilment["Pack"]["Lines"]}
        seen: set[str] = set()
        lines = []
        for line in body.get("Lines") or []:
            box = line.get("Box")
            if box in seen:
                raise Cin7Fault(400, f"{box} is already added to another shipment line")
            if box not in packed_boxes:
                raise Cin7Fault(400, f"{box} is not a packed box of this fulfilment")
            seen.add(box)
            lines.append({"ID": str(uuid.uuid4()), "ShipmentDate": line.get("ShipmentDate"),
                          "Carrier": line.get("Carrier"), "Boxes": box,
                          "TrackingNumber": line.get("TrackingNumber", ""), "TrackingURL": "",
                          "IsShipped": bool(line.get("IsShipped"))})  # fmt: skip
        status = body.get("Status") if body.get("Status") in ("AUTHORISED", "DRAFT") else "DRAFT"
        fulfilment["Ship"].update(Status=status, Lines=lines)
        self._touch_task(fulfilment)
        return _json({"TaskID": fulfilment["TaskID"], "Status": status, "Lines": lines})

    async def _put_ship(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        fulfilment = self._task(body.get("TaskID"))
        if not body.get("AddTrackingNumbers"):
            raise Cin7Fault(400, "Only AddTrackingNumbers is allowed after Ship is authorised")
        if fulfilment["Ship"]["Status"] != "AUTHORISED":
            raise Cin7Fault(400, "Ship is not authorised")
        by_box = {line["Boxes"]: line for line in fulfilment["Ship"]["Lines"]}
        for line in body.get("Lines") or []:
            box = line.get("Box")
            if box not in by_box:
                raise Cin7Fault(400, f"{box} has no shipment line")
            by_box[box].update(TrackingNumber=line.get("TrackingNumber", ""),
                               Carrier=line.get("Carrier", by_box[box]["Carrier"]))  # fmt: skip
        self._touch_task(fulfilment)
        return _json({"TaskID": fulfilment["TaskID"], "Status": "AUTHORISED",
                      "Lines": fulfilment["Ship"]["Lines"]})  # fmt: skip

    async def _post_attachment(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        sale = self._sale(body.get("SaleID"))
        content = body.get("Content")
        try:
            base64.b64decode(str(content), validate=True)
        except ValueError as exc:
            raise Cin7Fault(400, "Content is not valid base64") from exc
        item = {"ID": str(uuid.uuid4()), "ContentType": "application/pdf",
                "FileName": body.get("FileName"),
                "DownloadUrl": f"https://sandbox.invalid/{sale['ID']}/{body.get('FileName')}",
                "Content": content}  # fmt: skip
        self.attachments.setdefault(sale["ID"], []).append(item)
        self.touch(sale)
        listed = [
            {k: v for k, v in a.items() if k != "Content"} for a in self.attachments[sale["ID"]]
        ]
        return _json({"SaleID": sale["ID"], "Lines": listed})

    async def _get_attachments(self, request: web.Request) -> web.Response:
        sale = self._sale(request.query.get("SaleID"))
        listed = [
            {k: v for k, v in a.items() if k != "Content"}
            for a in self.attachments.get(sale["ID"], [])
        ]
        return _json({"SaleID": sale["ID"], "Lines": listed})

    async def _get_invoices(self, request: web.Request) -> web.Response:
        sale = self._sale(request.query.get("SaleID"))
        return _json({"SaleID": sale["ID"], "Invoices": self.invoices.get(sale["ID"], [])})

    async def _post_invoice(self, request: web.Request) -> web.Response:
        """Replaces the invoice with the one sent, lines and charges included (as Cin7 Core does);
        a field not sent is cleared (inferred: the strict reading of "rewrites")."""
        body = await self._body(request)
        for invoices in self.invoices.values():
            for invoice in invoices:
                if invoice["TaskID"] == body.get("TaskID"):
                    if invoice["Status"] != "DRAFT":
                        raise Cin7Fault(400, "Invoice is already authorised")
                    rewritten = {**body, **{key: invoice[key] for key in _INVOICE_KEPT}}
                    for key in ("Lines", "AdditionalCharges"):
                        rewritten[key] = list(body.get(key) or [])
                    invoice.clear()
                    invoice.update(rewritten)
                    return _json(invoice)
        raise Cin7Fault(400, f"Invoice task {body.get('TaskID')} not found", code=404)

    async def _get_webhooks(self, _request: web.Request) -> web.Response:
        return _json({"Webhooks": self.webhooks})

    async def _post_webhook(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        hook = {"IsActive": True, **body, "ID": str(uuid.uuid4())}
        self.webhooks.append(hook)
        return _json(hook)

    async def _put_webhook(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        for hook in self.webhooks:
            if str(hook["ID"]).lower() == str(body.get("ID", "")).lower():
                hook.clear()
                hook.update({"IsActive": True, **body})
                return _json(hook)
        raise Cin7Fault(400, f"Webhook with ID {body.get('ID')} not found", code=404)

    # --- admin ---------------------------------------------------------------------------------

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.close()

    async def _put_knobs(self, request: web.Request) -> web.Response:
        try:
            update = msgspec.json.decode(await request.read(), type=Cin7KnobsUpdate)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _json({"message": str(exc)}, 400)
        self.apply(update)
        return _json({"ok": True})

    def apply(self, update: Cin7KnobsUpdate) -> None:
        k = self.knobs
        names = ("latency", "error_rate", "throttle_style", "down", "writes_down",
                 "multiple_organisations")  # fmt: skip
        for name in names:
            value = getattr(update, name)
            if value is not None:
                setattr(k, name, value)
        if update.rate_limit is not None or update.window_s is not None:
            k.rate_limit = update.rate_limit or k.rate_limit
            k.window_s = update.window_s or k.window_s
            self.window.reconfigure(limit=update.rate_limit, window_s=update.window_s)

    async def _get_calls(self, _request: web.Request) -> web.Response:
        return _json(self.counters())

    async def _post_pack(self, request: web.Request) -> web.Response:
        sale_id = request.match_info["sale_id"]
        if sale_id not in self.sales:
            return _json({"message": f"no sale {sale_id}"}, 404)
        self.authorise_pack(sale_id)
        return _json({"SaleID": sale_id, "Pack": "AUTHORISED",
                      "at": dt.datetime.now(dt.UTC).isoformat()})  # fmt: skip

    async def _post_void(self, request: web.Request) -> web.Response:
        sale_id = request.match_info["sale_id"]
        if sale_id not in self.sales:
            return _json({"message": f"no sale {sale_id}"}, 404)
        self.void_sale(sale_id)
        return _json(self.summary(sale_id))

    async def _get_summary(self, request: web.Request) -> web.Response:
        sale_id = request.match_info["sale_id"]
        if sale_id not in self.sales:
            return _json({"message": f"no sale {sale_id}"}, 404)
        return _json(self.summary(sale_id))
