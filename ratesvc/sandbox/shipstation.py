"""An in-process emulator of the ShipStation v1 API, faithful to ``shared/UPSTREAMS.md``.

It enforces Basic auth (401), a fixed rate-limit window with the three ``X-Rate-Limit-*`` headers
on every answer and ShipStation's exact 429 body, rates one carrier per ``getrates`` call with the
documented quirks (unsorted rows; stamps_com package variants when ``packageCode`` is null; UPS
needs ``toState``; unknown codes → 500 with ``ExceptionMessage``), sells labels as real one-page
PDFs with carrier-plausible tracking numbers, voids them and lists shipments for reconciliation.

Use it in-process (``ShipStationSandbox().app`` with any aiohttp runner or test server) or
standalone (``ratesvc sandbox``). Knobs and counters: see :mod:`ratesvc.sandbox.knobs`; its
``createlabel_faults`` script the next purchases (an error before buying, or a label bought whose
answer is lost: a 500, a dropped connection or a late answer), one fault per call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import itertools
import random
import time
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import orjson
from aiohttp import web

from ratesvc.sandbox import pricing
from ratesvc.sandbox.knobs import FixedWindow, Knobs, KnobsUpdate, Latency
from ratesvc.sandbox.pdf import label_pdf

PACIFIC = ZoneInfo("America/Los_Angeles")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_encoder = msgspec.json.Encoder(decimal_format="number")
_WEIGHT_UNITS = {"pounds": "lb", "ounces": "oz", "grams": "g"}
_LENGTH_UNITS = {"inches": "in", "centimeters": "cm"}
_ADMIN = "/__sandbox/"


class SandboxFault(Exception):
    """Raised inside a handler to answer with a ShipStation-shaped error."""

    def __init__(self, status: int, body: object) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _model_state(field: str, message: str) -> SandboxFault:
    return SandboxFault(
        400, {"Message": "The request is invalid.", "ModelState": {f"request.{field}": [message]}}
    )


def _exception(message: str) -> SandboxFault:
    return SandboxFault(
        500,
        {
            "Message": "An error has occurred.",
            "ExceptionMessage": message,
            "ExceptionType": "System.Exception",
            "StackTrace": None,
        },
    )


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(
        body=_encoder.encode(body), status=status, content_type="application/json", charset="utf-8"
    )


class ShipStationSandbox:
    """State, knobs and the aiohttp app of one emulated ShipStation account."""

    def __init__(
        self,
        *,
        api_key: str = "sandbox-key",
        api_secret: str = "sandbox-secret",
        knobs: Knobs | None = None,
        carriers: tuple[str, ...] = ("stamps_com", "ups", "fedex", "dhl_express_worldwide"),
    ) -> None:
        self.knobs = knobs or Knobs()
        self.carriers = {code: pricing.CARRIERS[code] for code in carriers}
        self._auth = "Basic " + base64.b64encode(f"{api_key}:{api_secret}".encode()).decode()
        self.window = FixedWindow(self.knobs.rate_limit, self.knobs.window_s)
        self.calls: Counter[str] = Counter()
        self.carrier_calls: Counter[str] = Counter()
        self.throttled = 0
        self.unauthorized = 0
        self.shipments: dict[int, dict[str, Any]] = {}
        self.refused_voids: set[int] = set()
        # After buying a label: "drop" closes the connection without answering, "hang" answers
        # only after knobs.hang_s (the label is bought either way: an unknown outcome).
        # "refuse": a 400 before anything is bought.
        self.label_fault: str | None = None
        # Canned getrates answers by carrier code (raw JSON, sent verbatim): sample payloads.
        self.fixed_rates: dict[str, bytes] = {}
        self.received: deque[tuple[str, Any]] = deque(maxlen=1000)  # (path, JSON body) per call
        self._ids = itertools.count(72513480)
        self._rng = random.Random(self.knobs.seed)
        self._closing: asyncio.Event | None = None
        self.app = self._make_app()

    # --- Python control API -------------------------------------------------------------------

    def apply(self, update: KnobsUpdate) -> None:
        """Change knobs at run time (the admin route calls this too)."""
        k = self.knobs
        if update.latency is not None:
            k.latency = update.latency
        if update.carrier_latency is not None:
            k.carrier_latency = dict(update.carrier_latency)
        if update.error_rate is not None:
            k.error_rate = dict(update.error_rate)
        if update.timeout_rate is not None:
            k.timeout_rate = dict(update.timeout_rate)
        if update.hang_s is not None:
            k.hang_s = update.hang_s
        if update.rate_limit is not None or update.window_s is not None:
            k.rate_limit = update.rate_limit or k.rate_limit
            k.window_s = update.window_s or k.window_s
            self.window.reconfigure(limit=update.rate_limit, window_s=update.window_s)
        if update.storm_s is not None:
            self.storm(update.storm_s)
        if update.createlabel_faults is not None:
            k.createlabel_faults = list(update.createlabel_faults)

    def apply_window(self, *, limit: int | None = None, window_s: float | None = None) -> None:
        """Change the rate limit and/or the window length (a new window starts now)."""
        self.apply(KnobsUpdate(rate_limit=limit, window_s=window_s))

    def set_latency(
        self, base_ms: float, jitter_ms: float = 0.0, *, carrier: str | None = None
    ) -> None:
        latency = Latency(base_ms=base_ms, jitter_ms=jitter_ms)
        if carrier is None:
            self.knobs.latency = latency
        else:
            self.knobs.carrier_latency[carrier] = latency

    def storm(self, seconds: float) -> None:
        """Answer every call with 429 for ``seconds`` (a key exhausted by another program)."""
        self.window.storm_until = _monotonic() + seconds

    def reset_counters(self) -> None:
        self.calls.clear()
        self.carrier_calls.clear()
        self.throttled = 0
        self.unauthorized = 0
        self.window.served_per_window.clear()
        self.window.throttled_per_window.clear()

    def counters(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "carrier_calls": dict(self.carrier_calls),
            "throttled": self.throttled,
            "unauthorized": self.unauthorized,
            "served_per_window": {str(k): v for k, v in self.window.served_per_window.items()},
            "throttled_per_window": {
                str(k): v for k, v in self.window.throttled_per_window.items()
            },
            "shipments": len(self.shipments),
        }

    # --- the app ------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.router.add_get("/carriers", self._carriers)
        app.router.add_get("/carriers/listservices", self._list_services)
        app.router.add_get("/carriers/listpackages", self._list_packages)
        app.router.add_post("/shipments/getrates", self._getrates)
        app.router.add_post("/shipments/createlabel", self._createlabel)
        app.router.add_post("/shipments/voidlabel", self._voidlabel)
        app.router.add_get("/shipments", self._list_shipments)
        app.router.add_get(_ADMIN + "knobs", self._get_knobs)
        app.router.add_put(_ADMIN + "knobs", self._put_knobs)
        app.router.add_get(_ADMIN + "calls", self._get_calls)
        app.router.add_post(_ADMIN + "reset", self._post_reset)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self._closing = asyncio.Event()

    async def _on_shutdown(self, _app: web.Application) -> None:
        if self._closing is not None:
            self._closing.set()  # let hanging calls finish so the server can stop

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(_ADMIN):
            return await handler(request)
        self.calls[request.path.lower()] += 1
        if request.headers.get("Authorization") != self._auth:
            self.unauthorized += 1
            return _json({"Message": "Authorization has been denied for this request."}, 401)
        allowed, headers = self.window.admit()
        response: web.StreamResponse
        if not allowed:
            self.throttled += 1
            response = _json({"message": "Too Many Requests"}, 429)
        else:
            try:
                response = await handler(request)
            except SandboxFault as fault:
                response = _json(fault.body, fault.status)
        response.headers.update(headers)
        return response

    async def _behave(
        self, endpoint: str, carrier: str | None, *, since: float | None = None
    ) -> None:
        """Latency and injected faults for one call. ``since``: the loop time the call started
        being handled; the answer's own work since then counts toward its latency (the latency
        modelled is ShipStation's whole answer time, its computing included)."""
        if carrier is not None:
            self.carrier_calls[f"{endpoint}:{carrier}"] += 1
        latency = self.knobs.latency_for(carrier).sample(self._rng)
        if since is not None:
            latency -= asyncio.get_running_loop().time() - since
        await asyncio.sleep(max(0.0, latency))
        if self._rng.random() < self.knobs.rate_for(self.knobs.timeout_rate, carrier):
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.knobs.hang_s)
            raise SandboxFault(504, {"Message": "The carrier did not answer in time."})
        if self._rng.random() < self.knobs.rate_for(self.knobs.error_rate, carrier):
            raise _exception(f"{carrier or 'The carrier'} service is temporarily unavailable.")

    def _carrier(self, code: object) -> pricing.Carrier:
        if not code:
            raise _model_state("carrierCode", "The carrierCode field is required.")
        carrier = self.carriers.get(str(code))
        if carrier is None:
            raise _exception("Invalid carrierCode")
        return carrier

    async def _carriers(self, _request: web.Request) -> web.Response:
        await self._behave("carriers", None)
        return _json(
            [
                {
                    "name": c.name, "code": c.code, "accountNumber": c.account_number,
                    "requiresFundedAccount": c.requires_funded_account, "balance": Decimal("0.00"),
                    "nickname": c.nickname, "shippingProviderId": 100000 + i, "primary": True,
                }
                for i, c in enumerate(self.carriers.values())
            ]
        )  # fmt: skip

    async def _list_services(self, request: web.Request) -> web.Response:
        carrier = self._carrier(request.query.get("carrierCode"))
        await self._behave("listservices", carrier.code)
        return _json(
            [
                {"carrierCode": carrier.code, "code": s.code, "name": s.name,
                 "domestic": s.domestic, "international": s.international}
                for s in carrier.services
            ]
        )  # fmt: skip

    async def _list_packages(self, request: web.Request) -> web.Response:
        carrier = self._carrier(request.query.get("carrierCode"))
        await self._behave("listpackages", carrier.code)
        return _json(
            [
                {"carrierCode": carrier.code, "code": p.code, "name": p.name,
                 "domestic": p.domestic, "international": p.international}
                for p in carrier.packages
            ]
        )  # fmt: skip

    async def _getrates(self, request: web.Request) -> web.Response:
        since = asyncio.get_running_loop().time()
        raw = await request.read()
        body = _object(raw)
        self.received.append((request.path, body))
        carrier = self._carrier(body.get("carrierCode"))
        # The answer (or the refusal) is worked out first, then sent when the modelled latency
        # is over: a burst of calls does not queue its pricing behind everybody's latency.
        answer: web.Response | SandboxFault
        try:
            answer = self._rates_answer(carrier, raw, body)
        except SandboxFault as fault:
            answer = fault
        await self._behave("getrates", carrier.code, since=since)
        if isinstance(answer, SandboxFault):
            raise answer
        return answer

    def _rates_answer(
        self, carrier: pricing.Carrier, raw: bytes, body: dict[str, Any]
    ) -> web.Response:
        if carrier.code in self.fixed_rates:
            return web.Response(
                body=self.fixed_rates[carrier.code], content_type="application/json"
            )
        parcel = _Parcel.read(body)
        to_country = _required_text(body, "toCountry").upper()
        if carrier.state_required and to_country in ("US", "CA") and not body.get("toState"):
            raise _exception("The Ship To state or province code is missing or invalid.")
        services = _pick(carrier.services, body.get("serviceCode"), "serviceCode")
        packages = _pick(carrier.packages, body.get("packageCode"), "packageCode")
        variants = body.get("packageCode") is None and carrier.code == "stamps_com"
        if not variants:
            packages = [p for p in packages if p.code == (body.get("packageCode") or "package")]
        rows = []
        for service in services:
            if (to_country == "US" and not service.domestic) or (
                to_country != "US" and not service.international
            ):
                continue
            for package in packages:
                priced = self._price(carrier, service, package, parcel, body, to_country)
                if priced is None:
                    continue
                name = f"{service.name} - {package.name}" if variants else service.name
                rows.append({"serviceName": name, "serviceCode": service.code,
                             "shipmentCost": priced[0], "otherCost": priced[1]})  # fmt: skip
        random.Random(zlib.crc32(raw)).shuffle(rows)  # ShipStation's rows come unsorted
        return _json(rows)

    def _price(
        self,
        carrier: pricing.Carrier,
        service: pricing.Service,
        package: pricing.PackageType,
        parcel: _Parcel,
        body: dict[str, Any],
        to_country: str,
    ) -> tuple[Decimal, Decimal] | None:
        return pricing.price(
            carrier,
            service,
            package,
            zone_number=pricing.zone(
                _required_text(body, "fromPostalCode"), to_country,
                _required_text(body, "toPostalCode"),
            ),
            billable_lb=pricing.billable_pounds(
                carrier, parcel.weight, parcel.weight_unit, parcel.dims, parcel.dims_unit
            ),
            residential=bool(body.get("residential")),
            confirmation=body.get("confirmation"),
        )  # fmt: skip

    async def _createlabel(self, request: web.Request) -> web.Response:
        body = _object(await request.read())
        self.received.append((request.path, body))
        carrier = self._carrier(body.get("carrierCode"))
        fault = self._label_fault()
        await self._behave("createlabel", carrier.code)
        if self.label_fault == "refuse":
            raise _model_state("shipTo.address", "The address could not be validated.")
        if fault == "error_before_buy":
            raise _exception("The carrier could not be reached. Please try again.")
        if "testLabel" in body and not isinstance(body["testLabel"], bool | None):
            raise _model_state(
                "testlabel", f"The value '{body['testLabel']}' is not valid for Boolean."
            )
        service = _pick(carrier.services, _required_text(body, "serviceCode"), "serviceCode")[0]
        package = _pick(carrier.packages, _required_text(body, "packageCode"), "packageCode")[0]
        ship_date = _required_text(body, "shipDate")
        ship_from, ship_to = _address(body, "shipFrom"), _address(body, "shipTo")
        parcel = _Parcel.read(body)
        customs = _customs_items(body, ship_from, ship_to)
        route = {
            **body,
            "fromPostalCode": ship_from["postalCode"],
            "toPostalCode": ship_to["postalCode"],
            "residential": ship_to.get("residential"),
        }
        priced = self._price(carrier, service, package, parcel, route, ship_to["country"].upper())
        if priced is None:
            raise _exception(f"{service.name} cannot carry this package.")
        shipment_id = next(self._ids)
        tracking = _tracking_number(carrier.code, shipment_id)
        pdf = label_pdf(
            [
                f"{carrier.name} - {service.name}",
                f"SHIP DATE: {ship_date}   WEIGHT: {parcel.weight} {parcel.weight_unit}",
                "FROM: " + _one_line(ship_from, ("name", "city", "postalCode")),
                "TO: " + _one_line(ship_to, ("name", "street1", "city", "state", "postalCode")),
                "TEST LABEL - DO NOT SHIP" if body.get("testLabel") else "",
            ],
            big=f"TRACKING # {tracking}",
        )
        form = _customs_form(tracking, ship_to, customs) if customs else None
        record = {
            "shipmentId": shipment_id, "orderId": None, "orderKey": None, "userId": None,
            "customerEmail": None, "orderNumber": None,
            "createDate": dt.datetime.now(PACIFIC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0",
            "shipDate": ship_date, "shipmentCost": priced[0] + priced[1],
            "insuranceCost": Decimal("0.00"), "trackingNumber": tracking, "isReturnLabel": False,
            "batchNumber": None, "carrierCode": carrier.code, "serviceCode": service.code,
            "packageCode": package.code, "confirmation": body.get("confirmation"),
            "warehouseId": None, "voided": False, "voidDate": None, "marketplaceNotified": False,
            "notifyErrorMessage": None, "shipTo": ship_to, "weight": body.get("weight"),
            "dimensions": body.get("dimensions"), "insuranceOptions": None,
            "advancedOptions": body.get("advancedOptions"), "shipmentItems": None,
            "labelData": None, "formData": None,
        }  # fmt: skip
        self.shipments[shipment_id] = record
        if fault == "lost_after_buy":
            raise _exception("An error has occurred while saving the shipment.")
        if fault == "drop_after_buy":
            assert request.transport is not None
            request.transport.close()
            return _json({"Message": "connection lost"}, 500)
        if fault == "hang_after_buy":
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.knobs.hang_s)
        return _json({**record, "labelData": base64.b64encode(pdf).decode(), "shipTo": None,
                      "weight": None, "dimensions": None, "advancedOptions": None,
                      "formData": base64.b64encode(form).decode() if form else None})  # fmt: skip

    def _label_fault(self) -> str | None:
        """The fault for this createlabel call: the next scripted one, else the sticky one."""
        if self.knobs.createlabel_faults:
            return self.knobs.createlabel_faults.pop(0)
        return {"drop": "drop_after_buy", "hang": "hang_after_buy"}.get(self.label_fault or "")

    async def _voidlabel(self, request: web.Request) -> web.Response:
        body = _object(await request.read())
        shipment_id = body.get("shipmentId")
        await self._behave("voidlabel", None)
        if not isinstance(shipment_id, int) or shipment_id not in self.shipments:
            raise _model_state("shipmentId", f"Shipment {shipment_id} was not found.")
        record = self.shipments[shipment_id]
        if record["voided"]:
            return _json({"approved": False, "message": "Label has already been voided."})
        if shipment_id in self.refused_voids:
            return _json(
                {
                    "approved": False,
                    "message": "The carrier refused the void: label already scanned.",
                }
            )
        record["voided"] = True
        record["voidDate"] = dt.datetime.now(PACIFIC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0"
        return _json({"approved": True, "message": "Label voided successfully"})

    async def _list_shipments(self, request: web.Request) -> web.Response:
        await self._behave("shipments", None)
        query = request.query
        items = list(self.shipments.values())
        for key in ("carrierCode", "serviceCode", "trackingNumber"):
            if query.get(key):
                items = [s for s in items if s[key] == query[key]]
        start, end = (
            _pacific_bound(query.get("createDateStart")),
            _pacific_bound(query.get("createDateEnd")),
        )
        if start is not None:
            items = [s for s in items if s["createDate"][:19] >= start]
        if end is not None:
            items = [s for s in items if s["createDate"][:19] <= end]
        if query.get("shipDateStart"):
            items = [s for s in items if s["shipDate"] >= query["shipDateStart"][:10]]
        if query.get("shipDateEnd"):
            items = [s for s in items if s["shipDate"] <= query["shipDateEnd"][:10]]
        sort_key = "shipDate" if query.get("sortBy", "").lower() == "shipdate" else "createDate"
        items.sort(key=lambda s: (s[sort_key], s["shipmentId"]),
                   reverse=query.get("sortDir", "ASC").upper() == "DESC")  # fmt: skip
        page = _int(query.get("page"), 1, "page")
        size = min(500, _int(query.get("pageSize"), 100, "pageSize"))
        chunk = items[(page - 1) * size : page * size]
        return _json(
            {"shipments": chunk, "total": len(items), "page": page,
             "pages": (len(items) + size - 1) // size}
        )  # fmt: skip

    # --- admin ----------------------------------------------------------------------------------

    async def _get_knobs(self, _request: web.Request) -> web.Response:
        k = self.knobs
        return _json(
            {"latency": k.latency, "carrier_latency": k.carrier_latency,
             "error_rate": k.error_rate, "timeout_rate": k.timeout_rate, "hang_s": k.hang_s,
             "rate_limit": self.window.limit, "window_s": self.window.window_s,
             "createlabel_faults": k.createlabel_faults}
        )  # fmt: skip

    async def _put_knobs(self, request: web.Request) -> web.Response:
        try:
            update = msgspec.json.decode(await request.read(), type=KnobsUpdate)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _json({"message": str(exc)}, 400)
        self.apply(update)
        return await self._get_knobs(request)

    async def _get_calls(self, _request: web.Request) -> web.Response:
        return _json(self.counters())

    async def _post_reset(self, _request: web.Request) -> web.Response:
        self.reset_counters()
        return _json(self.counters())


class _Parcel(msgspec.Struct, frozen=True):
    weight: Decimal
    weight_unit: str
    dims: tuple[Decimal, Decimal, Decimal] | None
    dims_unit: str | None

    @classmethod
    def read(cls, body: dict[str, Any]) -> _Parcel:
        weight = body.get("weight")
        if not isinstance(weight, dict):
            raise _model_state("weight", "The weight field is required.")
        unit = _WEIGHT_UNITS.get(str(weight.get("units", "")).lower())
        if unit is None:
            raise _model_state("weight.units", f"The value '{weight.get('units')}' is not valid.")
        value = _positive(weight.get("value"), "weight.value")
        dims_body = body.get("dimensions")
        if not dims_body:
            return cls(value, unit, None, None)
        dims_unit = _LENGTH_UNITS.get(str(dims_body.get("units", "")).lower())
        if dims_unit is None:
            raise _model_state(
                "dimensions.units", f"The value '{dims_body.get('units')}' is not valid."
            )
        sides = tuple(
            _positive(dims_body.get(k), f"dimensions.{k}") for k in ("length", "width", "height")
        )
        return cls(value, unit, sides, dims_unit)  # type: ignore[arg-type]


def _object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _model_state("", "The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise _model_state("", "The request body must be a JSON object.")
    return body


def _required_text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _model_state(key, f"The {key} field is required.")
    return value


def _positive(value: object, field: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _model_state(field, f"The {field} field is required.")
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if number <= 0:
        raise _model_state(field, f"The {field} field must be greater than 0.")
    return number


def _int(value: str | None, default: int, field: str) -> int:
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise _model_state(field, f"The value '{value}' is not valid for {field}.")
    return int(value)


def _pick(items: tuple[Any, ...], code: object, field: str) -> list[Any]:
    if code is None:
        return list(items)
    found = [item for item in items if item.code == code]
    if not found:
        raise _exception(f"Invalid {field}")
    return found


def _address(body: dict[str, Any], key: str) -> dict[str, Any]:
    address = body.get(key)
    if not isinstance(address, dict):
        raise _model_state(key, f"The {key} field is required.")
    for part in ("postalCode", "country"):
        if not isinstance(address.get(part), str) or not address[part]:
            raise _model_state(f"{key}.{part}", f"The {part} field is required.")
    return address


def _customs_items(
    body: dict[str, Any], ship_from: dict[str, Any], ship_to: dict[str, Any]
) -> list[dict[str, Any]]:
    """An international label's customs items; refused (as ShipStation does, 500) when absent.
    International: the countries differ, or the ship-to is a US military address."""
    military = str(ship_to.get("state") or "").upper() in ("AA", "AE", "AP")
    if ship_from["country"].upper() == ship_to["country"].upper() and not military:
        return []
    options = body.get("internationalOptions")
    items = options.get("customsItems") if isinstance(options, dict) else None
    if not isinstance(items, list) or not items:
        raise _exception("Customs information is required for international shipments.")
    for item in items:
        if (
            not isinstance(item, dict)
            or not item.get("description")
            or not item.get("countryOfOrigin")
        ):
            raise _exception("Each customs item needs a description and a country of origin.")
        if not isinstance(item.get("quantity"), int) or item["quantity"] < 1:
            raise _exception("Each customs item needs a quantity of at least 1.")
        value = item.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise _exception("Each customs item needs a value of 0 or more.")
    return items


def _customs_form(tracking: str, ship_to: dict[str, Any], items: list[dict[str, Any]]) -> bytes:
    """A one-page customs declaration (CN22-like) listing the items."""
    lines = [f"TO: {_one_line(ship_to, ('name', 'city', 'state', 'country'))}", ""]
    for item in items[:20]:
        lines.append(
            f"{item['quantity']} x {item['description']} - USD {item['value']} - "
            f"HS {item.get('harmonizedTariffCode') or '-'} - {item['countryOfOrigin']}"
        )
    if len(items) > 20:
        lines.append(f"... and {len(items) - 20} more items")
    return label_pdf(lines, big=f"CUSTOMS DECLARATION {tracking}")


def _one_line(address: dict[str, Any], parts: tuple[str, ...]) -> str:
    return ", ".join(str(address[p]) for p in parts if address.get(p))


def _pacific_bound(value: str | None) -> str | None:
    """``2026-11-29 08:00:00`` or ISO → the sortable ``YYYY-MM-DDTHH:MM:SS`` prefix."""
    if not value:
        return None
    text = value.strip().replace(" ", "T")
    return text[:19] if len(text) >= 19 else text[:10] + "T00:00:00"


def _tracking_number(carrier: str, shipment_id: int) -> str:
    digits = f"{zlib.crc32(str(shipment_id).encode()):010d}{shipment_id:08d}"
    if carrier == "ups":
        return f"1Z999AA1{digits[-10:]}"  # 18 characters, the 1Z format
    if carrier == "fedex":
        return digits[-12:]
    if carrier == "stamps_com":
        return f"9400{digits}"  # 22 digits, the USPS IMpb format
    return digits[-10:]  # DHL Express waybills have 10 digits


def _monotonic() -> float:
    return time.monotonic()  # loop.time()'s clock, usable outside a running loop
