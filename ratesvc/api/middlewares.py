"""The edge: request id, bearer-token auth, problem+json errors, metrics — one middleware.

One layer rather than four: on a replayed ``POST /v1/rates`` (the service's hottest path) every
layer is a measurable share of the request (``benchmarks.cache_hits``)."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ratesvc import keys
from ratesvc.accounts import AccountServices
from ratesvc.api.params import is_text
from ratesvc.api.problems import problem_response
from ratesvc.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RatesvcError,
    RequestError,
    Unauthorized,
)
from ratesvc.storage.outage import ledger_outage

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A client's X-Request-Id is echoed only when it is this tame; anything else (control characters,
# other scripts, over 128 characters) is replaced by a generated id rather than refused: the id
# is for tracing, and a request must not fail over it.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_REQUEST_ID_KEY = "ratesvc.request_id"
_ACCOUNT_KEY = "ratesvc.account"
# Routes under /v1/ that authenticate themselves (Cin7 Core's webhook credential).
_SELF_AUTHENTICATED = ("/v1/webhooks/",)
# Generated request ids: a counter under a keyed hash (unique, cheap, and it says nothing of how
# many requests others made); the key and counter are drawn again in a forked child.
_ID_KEY = os.urandom(16)
_IDS = itertools.count()


def _new_ids() -> None:
    global _ID_KEY, _IDS
    _ID_KEY, _IDS = os.urandom(16), itertools.count()


os.register_at_fork(after_in_child=_new_ids)


def _generated_id() -> str:
    counter = next(_IDS).to_bytes(8, "big")
    return hashlib.blake2b(counter, key=_ID_KEY, digest_size=16).hexdigest()


def request_id(request: web.Request) -> str:
    return str(request.get(_REQUEST_ID_KEY, ""))


def current_account(request: web.Request) -> AccountServices:
    """The account the bearer token belongs to (set by :func:`auth_middleware`)."""
    services = request.get(_ACCOUNT_KEY)
    if not isinstance(services, AccountServices):
        raise Unauthorized("this route needs Authorization: Bearer <token>")
    return services


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What every answer gets on its way out: a request id, problem+json for any error (a logged
    500 for anything unexpected), and its count and latency in the metrics.

    One middleware rather than three: each layer costs every request a call.
    """
    started = time.perf_counter()
    given = request.headers.get("X-Request-Id", "")
    rid = given if given and _REQUEST_ID.fullmatch(given) else _generated_id()
    request[_REQUEST_ID_KEY] = rid
    try:
        limit = request.app[keys.SETTINGS].max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        path = request.path
        if path.startswith("/v1/") and not path.startswith(_SELF_AUTHENTICATED):
            request[_ACCOUNT_KEY] = _account(request)
        response = await handler(request)
    except Exception as exc:
        response = _answer_for(request, exc)
    response.headers["X-Request-Id"] = rid
    route = request.match_info.route.resource
    template = route.canonical if route is not None else "unmatched"
    count, latency = request.app[keys.METRICS].http_series(
        template, request.method, response.status
    )
    count.inc()
    latency.observe(time.perf_counter() - started)
    return response


def _answer_for(request: web.Request, exc: Exception) -> web.StreamResponse:
    if isinstance(exc, RatesvcError):
        if not isinstance(exc, RequestError):
            log.warning("%s %s: %s (%s)", request.method, request.path, exc.code, exc.detail)
        return _problem(request, exc)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app[keys.SETTINGS].max_body_bytes
        return _problem(request, PayloadTooLarge(f"the body is larger than {limit} bytes"))
    if isinstance(exc, web.HTTPNotFound):
        return _problem(request, NotFound(f"no route {request.path}"))
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = _problem(
            request, MethodNotAllowed(f"{request.method} is not allowed here; use {allowed}")
        )
        response.headers["Allow"] = allowed
        return response
    if isinstance(exc, web.HTTPException):
        return exc  # a deliberate HTTP answer (none of ours raise one; aiohttp's redirects)
    outage = ledger_outage(exc)
    if outage is not None:  # PostgreSQL out of reach: 503, the cause logged (never shown)
        log.warning("%s %s: storage_unavailable: the ledger cannot be reached (%s: %s)",
                    request.method, request.path, type(exc).__name__, exc)  # fmt: skip
        return _problem(request, outage)
    log.error(
        "unhandled error in %s %s [%s]", request.method, request.path, request_id(request),
        exc_info=exc,
    )  # fmt: skip
    bug = RatesvcError("an unexpected error occurred; it has been logged with the request id")
    return _problem(request, bug)


def _problem(request: web.Request, error: RatesvcError) -> web.Response:
    response = problem_response(error, request_id(request) or None)
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="ratesvc"'
    return response


def _account(request: web.Request) -> AccountServices:
    """The account of the request's bearer token (401 otherwise)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or not is_text(token):
        raise Unauthorized("send Authorization: Bearer <token> with an API token of your account")
    name = request.app[keys.TOKENS].get(hashlib.sha256(token.encode()).digest())
    if name is None:
        raise Unauthorized("the bearer token is not known; check RATESVC_API_TOKEN")
    return request.app[keys.ACCOUNTS][name]


MIDDLEWARES = (edge_middleware,)
