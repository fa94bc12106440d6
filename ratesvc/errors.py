"""The exception tree. Every error the service reports has a stable ``code`` and an HTTP status.

::

    RatesvcError                      code / status / title / detail
    ├── RequestError                  the caller must change something (4xx)
    │   ├── MalformedJson             400 malformed_json
    │   ├── Unauthorized              401 unauthorized
    │   ├── NotFound                  404 not_found
    │   ├── MethodNotAllowed          405 method_not_allowed
    │   ├── SaleNotReady              409 sale_not_ready (the fulfilment's Pack is not AUTHORISED)
    │   ├── AlreadyShipped            409 already_shipped (tracking already on the fulfilment)
    │   ├── AlreadyLabelled           409 already_labelled (a live label holds the fulfilment)
    │   ├── SaleChanged               409 sale_changed (boxes or ship-to changed since quoted)
    │   ├── Reconciling               409 reconciling (a purchase's outcome is still unknown)
    │   ├── AlreadyVoided             409 already_voided
    │   ├── VoidRejected              409 void_rejected (the carrier's message in ``detail``)
    │   ├── QuoteExpired              410 quote_expired
    │   ├── PayloadTooLarge           413 payload_too_large
    │   ├── InvalidRequest            422 invalid_request (``errors`` lists each field)
    │   │   ├── CustomsRequired       422 customs_required (international, no customs_items)
    │   │   └── CustomsIncomplete     422 customs_incomplete (a sale's declaration lacks facts)
    │   └── IdempotencyKeyReused      422 idempotency_key_reused
    ├── StorageUnavailable            503 storage_unavailable: the ledger or Redis is out of reach
    └── UpstreamFailure               ShipStation or Cin7 Core let us down (5xx)
        ├── UpstreamError             502 upstream_error: answered with an error we cannot fix
        │   └── UpstreamNotFound      502 upstream_error: the thing asked for is not there
        ├── UpstreamAuth              502 upstream_auth: our credentials were rejected
        ├── UpstreamUnavailable       503 upstream_unavailable: down, 5xx, connection refused
        │   └── UpstreamThrottled     503 upstream_unavailable: rate-limited past the deadline
        └── UpstreamTimeout           504 deadline_exceeded: no answer in time

An ``UpstreamFailure`` also carries ``leg_code``: the per-carrier code used inside a partial
answer (``upstream_error``, ``upstream_auth``, ``upstream_throttled``, ``upstream_timeout``), and
whether retrying the same call may help (``retryable``). Anything that is not a ``RatesvcError``
reaching the HTTP edge is a bug and answers 500 ``internal_error``.
"""

from __future__ import annotations

from http import HTTPStatus

import msgspec

# Every problem ``code`` of the HTTP contract (../shared/API.md), for the OpenAPI enum. A new
# error class's code must be added here (a test walks the tree).
PROBLEM_CODES = (
    "malformed_json", "unauthorized", "not_found", "method_not_allowed", "sale_not_ready",
    "already_shipped", "already_labelled", "sale_changed", "reconciling", "already_voided",
    "void_rejected", "event_not_retryable", "quote_expired", "payload_too_large", "invalid_request",
    "idempotency_key_reused", "customs_required", "customs_incomplete", "upstream_error",
    "upstream_auth", "upstream_unavailable", "deadline_exceeded", "storage_unavailable",
    "internal_error",
)  # fmt: skip


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid field of a request body: a path like ``packages[0].weight.value``."""

    field: str
    message: str


class RatesvcError(Exception):
    """Base of every error reported to clients; ``label_id`` names the label it is about."""

    code: str = "internal_error"
    status: int = 500

    def __init__(self, detail: str, *, label_id: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.label_id = label_id

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase


class RequestError(RatesvcError):
    """The request cannot be served as sent."""

    status = 400


class MalformedJson(RequestError):
    code = "malformed_json"
    status = 400


class Unauthorized(RequestError):
    code = "unauthorized"
    status = 401


class NotFound(RequestError):
    code = "not_found"
    status = 404


class MethodNotAllowed(RequestError):
    code = "method_not_allowed"
    status = 405


class SaleNotReady(RequestError):
    code = "sale_not_ready"
    status = 409


class AlreadyShipped(RequestError):
    code = "already_shipped"
    status = 409


class AlreadyLabelled(RequestError):
    code = "already_labelled"
    status = 409


class SaleChanged(RequestError):
    code = "sale_changed"
    status = 409


class Reconciling(RequestError):
    code = "reconciling"
    status = 409


class AlreadyVoided(RequestError):
    code = "already_voided"
    status = 409


class VoidRejected(RequestError):
    code = "void_rejected"
    status = 409


class IdempotencyKeyReused(RequestError):
    code = "idempotency_key_reused"
    status = 422


class QuoteExpired(RequestError):
    code = "quote_expired"
    status = 410


class PayloadTooLarge(RequestError):
    code = "payload_too_large"
    status = 413


class InvalidRequest(RequestError):
    code = "invalid_request"
    status = 422

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors or []

    @classmethod
    def field(cls, field: str, message: str) -> InvalidRequest:
        return cls(f"{field} {message}", [FieldError(field=field, message=message)])


class CustomsRequired(InvalidRequest):
    """An international shipment's packages must declare their contents before buying."""

    code = "customs_required"
    status = 422


class CustomsIncomplete(InvalidRequest):
    """A declaration built from a sale lacks what carriers need: ``errors`` names each product
    and field, to be fixed in Cin7 Core."""

    code = "customs_incomplete"
    status = 422


class StorageUnavailable(RatesvcError):
    """What replicas share cannot be reached now; retrying later may help.

    Reading a quote from the shared store (Redis) answers it, since the quote may well exist
    where it cannot be read (rating never does: it falls back to this process); so does any
    request the ledger cannot serve because its database is out of reach
    (:mod:`ratesvc.storage.outage`, at the edge), with ``retry_after_s`` for Retry-After.
    """

    code = "storage_unavailable"
    status = 503

    def __init__(
        self, detail: str, *, label_id: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(detail, label_id=label_id)
        self.retry_after_s = retry_after_s


class UpstreamFailure(RatesvcError):
    """An upstream call failed; ``upstream`` and ``endpoint`` say which one."""

    status = 502
    code = "upstream_error"
    leg_code = "upstream_error"
    retryable = False

    def __init__(
        self,
        detail: str,
        *,
        upstream: str = "",
        endpoint: str = "",
        upstream_status: int | None = None,
        maybe_processed: bool = False,
    ) -> None:
        super().__init__(detail)
        self.upstream = upstream
        self.endpoint = endpoint
        self.upstream_status = upstream_status
        # True when the request may have reached upstream and been acted on (no answer read).
        self.maybe_processed = maybe_processed


class UpstreamError(UpstreamFailure):
    code = "upstream_error"
    leg_code = "upstream_error"
    status = 502


class UpstreamNotFound(UpstreamError):
    """Upstream says the object does not exist; callers that asked for it by id say 404."""


class UpstreamAuth(UpstreamFailure):
    code = "upstream_auth"
    leg_code = "upstream_auth"
    status = 502


class UpstreamUnavailable(UpstreamFailure):
    code = "upstream_unavailable"
    leg_code = "upstream_error"
    status = 503
    retryable = True


class UpstreamThrottled(UpstreamUnavailable):
    """Rate-limited: the key's window has no room before the caller's deadline."""

    leg_code = "upstream_throttled"
    retryable = False  # the limiter already knows no turn comes in time; a 429 answer is retried

    def __init__(
        self,
        detail: str,
        *,
        reset_after_s: float | None = None,
        upstream: str = "",
        endpoint: str = "",
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(
            detail, upstream=upstream, endpoint=endpoint, upstream_status=upstream_status
        )
        self.reset_after_s = reset_after_s


class UpstreamTimeout(UpstreamFailure):
    code = "deadline_exceeded"
    leg_code = "upstream_timeout"
    status = 504
    retryable = True
