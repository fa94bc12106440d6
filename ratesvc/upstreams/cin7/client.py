"""Cin7 Core API v2 client: I/O only. Requests and answers are translated by ``mapping``.

One client per account (organisation); it receives the shared ``aiohttp.ClientSession`` and the
API application's :class:`~ratesvc.limiter.RateLimiter` (60 calls per 60 s, paced to about one a
second, paused globally on any of Cin7 Core's three throttling answers).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import aiohttp
import msgspec

from ratesvc.codec import decoder_for
from ratesvc.config import Cin7Config
from ratesvc.errors import UpstreamError
from ratesvc.limiter import Limiter, Priority, RateLimiter
from ratesvc.metrics import Metrics
from ratesvc.sales import Product, Sale
from ratesvc.upstreams.cin7 import mapping, wire
from ratesvc.upstreams.http import Retry, RetryPolicy, UpstreamHttp

T = TypeVar("T")
BeforeSend = Callable[[], Awaitable[None]]
"""Run once the limiter grants a write, right before it is sent; what it raises stops the write
unsent (a write-back confirms its claim on the job there)."""


def _decode(body: bytes, kind: type[T], endpoint: str) -> T:
    with _reading(endpoint):
        return decoder_for(kind).decode(body)


@contextmanager
def _reading(endpoint: str) -> Iterator[None]:
    try:
        yield
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamError(
            f"Cin7 Core sent an answer to {endpoint} that cannot be read: {exc}",
            upstream="cin7",
            endpoint=endpoint,
        ) from exc


CIN7_CALLS_PER_WINDOW = 60  # per API application, sliding minute (UPSTREAMS.md)


def cin7_limiter(
    name: str,
    *,
    min_interval_s: float = 1.0,
    throttle_pause_s: float = 20.0,
    window_s: float = 60.0,
    metrics: Metrics | None = None,
) -> RateLimiter:
    """60 calls per 60 s, about one a second; a refusal (Cin7 Core gives no reset time) pauses
    the whole application for ``throttle_pause_s`` (inferred: long enough for a sliding minute
    to drain a little, short enough not to stall write-backs)."""
    return RateLimiter(
        f"cin7:{name}", limit=CIN7_CALLS_PER_WINDOW, window_s=window_s,
        min_interval_s=min_interval_s, throttle_pause_s=throttle_pause_s, metrics=metrics,
    )  # fmt: skip


class Cin7Client:
    """Every Cin7 Core endpoint ratesvc uses."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: Cin7Config,
        limiter: Limiter,
        *,
        metrics: Metrics | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.limiter = limiter
        self._http = UpstreamHttp(
            upstream="cin7",
            session=session,
            base_url=config.url,
            headers={
                "api-auth-accountid": config.account_id.reveal(),
                "api-auth-applicationkey": config.application_key.reveal(),
                "Accept": "application/json",
            },
            limiter=limiter,
            map_error=mapping.error_from_response,
            metrics=metrics,
            retry_policy=retry_policy,
            is_throttled=mapping.is_throttled,
        )

    async def get_sale(
        self, sale_id: str, *, deadline: float | None, priority: Priority = Priority.NORMAL
    ) -> Sale:
        answer = await self._http.call(
            "GET", "/sale", endpoint="sale", priority=priority, deadline=deadline,
            retry=Retry.SAFE, params={"ID": sale_id, "CountryFormat": "Code2"},
        )  # fmt: skip
        return mapping.sale_from_wire(_decode(answer.body, wire.Sale, "sale"))

    async def get_product(
        self, product_id: str, *, deadline: float | None, priority: Priority = Priority.NORMAL
    ) -> Product | None:
        answer = await self._http.call(
            "GET", "/product", endpoint="product", priority=priority, deadline=deadline,
            retry=Retry.SAFE, params={"ID": product_id},
        )  # fmt: skip
        products = _decode(answer.body, wire.ProductList, "product").Products
        return mapping.product_from_wire(products[0]) if products else None

    async def ready_for_shipping(
        self, *, page: int, limit: int, deadline: float | None
    ) -> wire.SaleList:
        answer = await self._http.call(
            "GET", "/saleList", endpoint="saleList", priority=Priority.BACKGROUND,
            deadline=deadline, retry=Retry.SAFE,
            params={"ReadyForShipping": "true", "Page": str(page), "Limit": str(limit)},
        )  # fmt: skip
        return _decode(answer.body, wire.SaleList, "saleList")

    async def ship(
        self,
        task_id: str,
        lines: list[wire.ShipLineWrite],
        *,
        authorise: bool,
        add_tracking: bool = False,
        deadline: float | None,
        before_send: BeforeSend | None = None,
    ) -> None:
        """Write ship lines (``POST``), or add tracking to an authorised Ship (``PUT``)."""
        body = wire.ShipWrite(
            TaskID=task_id, Status="AUTHORISED" if authorise else "DRAFT", Lines=lines,
            AddTrackingNumbers=True if add_tracking else None,
        )  # fmt: skip
        await self._http.call(
            "PUT" if add_tracking else "POST", "/sale/fulfilment/ship", endpoint="ship",
            priority=Priority.URGENT, deadline=deadline, retry=Retry.THROTTLE_ONLY,
            json_body=wire.encoder.encode(body), before_send=before_send,
        )  # fmt: skip

    async def attach(
        self,
        sale_id: str,
        file_name: str,
        content: bytes,
        *,
        deadline: float | None,
        before_send: BeforeSend | None = None,
    ) -> None:
        body = wire.AttachmentWrite(
            SaleID=sale_id, FileName=file_name, Content=base64.b64encode(content).decode()
        )
        await self._http.call(
            "POST", "/sale/attachment", endpoint="attachment", priority=Priority.URGENT,
            deadline=deadline, retry=Retry.THROTTLE_ONLY, json_body=wire.encoder.encode(body),
            before_send=before_send,
        )  # fmt: skip

    async def invoices(self, sale_id: str, *, deadline: float | None) -> list[wire.InvoiceDocument]:
        answer = await self._http.call(
            "GET", "/sale/invoice", endpoint="invoice", priority=Priority.URGENT,
            deadline=deadline, retry=Retry.SAFE, params={"SaleID": sale_id},
        )  # fmt: skip
        with _reading("invoice"):
            documents = wire.invoices_decoder.decode(answer.body).Invoices
            return [mapping.invoice_from_document(document) for document in documents]

    async def add_invoice_charge(
        self,
        invoice: wire.InvoiceDocument,
        charge: wire.InvoiceCharge,
        *,
        deadline: float | None,
        before_send: BeforeSend | None = None,
    ) -> None:
        """``POST /sale/invoice`` replaces the whole invoice: it goes back as it was read, fields
        ratesvc does not model included, with ``charge`` added to its additional charges."""
        await self._rewrite_invoice(
            mapping.invoice_with_charge(invoice, charge), deadline, before_send
        )

    async def remove_invoice_charge(
        self,
        invoice: wire.InvoiceDocument,
        comment: str,
        *,
        deadline: float | None,
        before_send: BeforeSend | None = None,
    ) -> None:
        """The invoice back whole, without the additional charges whose comment is ``comment``."""
        await self._rewrite_invoice(
            mapping.invoice_without_charge(invoice, comment), deadline, before_send
        )

    async def _rewrite_invoice(
        self, body: dict[str, Any], deadline: float | None, before_send: BeforeSend | None
    ) -> None:
        await self._http.call(
            "POST", "/sale/invoice", endpoint="invoice", priority=Priority.URGENT,
            deadline=deadline, retry=Retry.THROTTLE_ONLY, json_body=wire.encoder.encode(body),
            before_send=before_send,
        )  # fmt: skip

    async def locations(self, *, deadline: float | None) -> list[wire.Location]:
        answer = await self._http.call(
            "GET", "/ref/location", endpoint="location", priority=Priority.NORMAL,
            deadline=deadline, retry=Retry.SAFE,
        )  # fmt: skip
        return _decode(answer.body, wire.LocationList, "location").LocationList

    async def subscribe(self, hook: wire.Webhook, *, deadline: float | None) -> wire.Webhook:
        answer = await self._http.call(
            "POST", "/webhooks", endpoint="webhooks", priority=Priority.NORMAL, deadline=deadline,
            retry=Retry.THROTTLE_ONLY, json_body=wire.encoder.encode(hook),
        )  # fmt: skip
        return _decode(answer.body, wire.Webhook, "webhooks")

    async def update_webhook(self, hook: wire.Webhook, *, deadline: float | None) -> wire.Webhook:
        """``PUT /webhooks`` with the subscription's ``ID``: new URL, credential, IsActive."""
        answer = await self._http.call(
            "PUT", "/webhooks", endpoint="webhooks", priority=Priority.NORMAL, deadline=deadline,
            retry=Retry.THROTTLE_ONLY, json_body=wire.encoder.encode(hook),
        )  # fmt: skip
        return _decode(answer.body, wire.Webhook, "webhooks")

    async def webhooks(
        self, *, deadline: float | None, priority: Priority = Priority.NORMAL
    ) -> list[wire.Webhook]:
        answer = await self._http.call(
            "GET", "/webhooks", endpoint="webhooks", priority=priority, deadline=deadline,
            retry=Retry.SAFE,
        )  # fmt: skip
        return _decode(answer.body, wire.WebhookList, "webhooks").Webhooks
