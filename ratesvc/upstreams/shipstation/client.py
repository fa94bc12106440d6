"""ShipStation v1 client: I/O only. Requests and answers are translated by ``mapping``.

One client per account (key pair); it receives the shared ``aiohttp.ClientSession`` and the key
pair's :class:`~ratesvc.limiter.Limiter`, never creating either. ``deadline`` arguments are
absolute ``loop.time()`` values.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import msgspec

from ratesvc.codec import decoder_for
from ratesvc.config import ShipStationConfig
from ratesvc.errors import UpstreamError
from ratesvc.limiter import Limiter, Priority
from ratesvc.metrics import Metrics
from ratesvc.models import (
    CarrierInfo,
    LabelRequest,
    PackageInfo,
    RateRequest,
    RateRow,
    ServiceInfo,
    ShipmentPage,
    ShipmentQuery,
    ShipmentRecord,
    VoidResult,
)
from ratesvc.upstreams.http import Retry, RetryPolicy, UpstreamHttp
from ratesvc.upstreams.shipstation import mapping, wire

T = TypeVar("T")


def _decode(body: bytes, kind: type[T], endpoint: str, *, maybe_processed: bool = False) -> T:
    """``maybe_processed``: the call changes something (a label bought, voided), so an answer
    that cannot be read leaves its outcome unknown, not refused."""
    try:
        return decoder_for(kind).decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamError(
            f"ShipStation sent an answer to {endpoint} that cannot be read: {exc}",
            upstream="shipstation",
            endpoint=endpoint,
            maybe_processed=maybe_processed,
        ) from exc


def basic_auth_header(config: ShipStationConfig) -> str:
    pair = f"{config.api_key.reveal()}:{config.api_secret.reveal()}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


class ShipStationClient:
    """Every ShipStation v1 endpoint ratesvc uses."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: ShipStationConfig,
        limiter: Limiter,
        *,
        metrics: Metrics | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.limiter = limiter
        self._http = UpstreamHttp(
            upstream="shipstation",
            session=session,
            base_url=config.url,
            headers={"Authorization": basic_auth_header(config), "Accept": "application/json"},
            limiter=limiter,
            map_error=mapping.error_from_response,
            metrics=metrics,
            retry_policy=retry_policy,
        )

    async def list_carriers(
        self, *, deadline: float | None, priority: Priority = Priority.NORMAL
    ) -> list[CarrierInfo]:
        answer = await self._http.call(
            "GET", "/carriers", endpoint="carriers", priority=priority, deadline=deadline,
            retry=Retry.SAFE,
        )  # fmt: skip
        return mapping.carriers_from_wire(_decode(answer.body, list[wire.Carrier], "carriers"))

    async def list_services(
        self, carrier_code: str, *, deadline: float | None, priority: Priority = Priority.NORMAL
    ) -> list[ServiceInfo]:
        answer = await self._http.call(
            "GET", "/carriers/listservices", endpoint="listservices", priority=priority,
            deadline=deadline, retry=Retry.SAFE, params={"carrierCode": carrier_code},
        )  # fmt: skip
        items = _decode(answer.body, list[wire.ServiceOrPackage], "listservices")
        return mapping.services_from_wire(items)

    async def list_packages(
        self, carrier_code: str, *, deadline: float | None, priority: Priority = Priority.NORMAL
    ) -> list[PackageInfo]:
        answer = await self._http.call(
            "GET", "/carriers/listpackages", endpoint="listpackages", priority=priority,
            deadline=deadline, retry=Retry.SAFE, params={"carrierCode": carrier_code},
        )  # fmt: skip
        items = _decode(answer.body, list[wire.ServiceOrPackage], "listpackages")
        return mapping.packages_from_wire(items)

    async def get_rates(
        self, request: RateRequest, *, deadline: float | None, priority: Priority = Priority.NORMAL
    ) -> list[RateRow]:
        body = wire.encoder.encode(mapping.rate_request_to_wire(request))
        answer = await self._http.call(
            "POST", "/shipments/getrates", endpoint="getrates", priority=priority,
            deadline=deadline, retry=Retry.SAFE, json_body=body,
        )  # fmt: skip
        return mapping.rates_from_wire(_decode(answer.body, list[wire.Rate], "getrates"))

    async def create_label(
        self,
        request: LabelRequest,
        *,
        deadline: float | None,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> ShipmentRecord:
        """Buy one label. Never retried: an unknown outcome must be reconciled by the caller.
        ``before_send`` runs when the limiter grants the call, right before it is sent."""
        body = wire.encoder.encode(mapping.label_request_to_wire(request))
        answer = await self._http.call(
            "POST", "/shipments/createlabel", endpoint="createlabel", priority=Priority.URGENT,
            deadline=deadline, retry=Retry.NEVER, json_body=body, before_send=before_send,
        )  # fmt: skip
        shipment = _decode(answer.body, wire.Shipment, "createlabel", maybe_processed=True)
        return mapping.shipment_from_wire(shipment)

    async def void_label(self, shipment_id: int, *, deadline: float | None) -> VoidResult:
        body = wire.encoder.encode(wire.VoidRequest(shipmentId=shipment_id))
        answer = await self._http.call(
            "POST", "/shipments/voidlabel", endpoint="voidlabel", priority=Priority.URGENT,
            deadline=deadline, retry=Retry.THROTTLE_ONLY, json_body=body,
        )  # fmt: skip
        answer_ = _decode(answer.body, wire.VoidResponse, "voidlabel", maybe_processed=True)
        return mapping.void_from_wire(answer_)

    async def list_shipments(
        self,
        query: ShipmentQuery,
        *,
        deadline: float | None,
        priority: Priority = Priority.URGENT,
    ) -> ShipmentPage:
        answer = await self._http.call(
            "GET", "/shipments", endpoint="shipments", priority=priority, deadline=deadline,
            retry=Retry.SAFE, params=mapping.shipment_query_to_params(query),
        )  # fmt: skip
        page = _decode(answer.body, wire.ShipmentList, "shipments")
        return mapping.shipment_page_from_wire(page)
