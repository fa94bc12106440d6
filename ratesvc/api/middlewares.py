"""The edge: request id, bearer-token auth, problem+json errors, metrics — around every route.

Not an aiohttp middleware (the module keeps its name for the handlers that import
:func:`current_account`): an app with any middleware pays aiohttp's middleware chain and its own
current-app fixer on every request, a measurable share of a replayed ``POST /v1/rates``, the
service's hottest path (``benchmarks.cache_hits``). Instead every handler is wrapped once, when
:func:`add_route` registers it, with what that route needs decided then (its metrics label, its
series, whether it takes a bearer token); a catch-all resource registered last
(:func:`add_unmatched`) answers unknown paths (404) and wrong methods (405 with ``Allow``) as
problems like any other. A route registered with ``app.router.add_*`` directly would have no
auth, ids or metrics: the app refuses to start with one (:func:`add_unmatched` installs the check).
"""

from __future__ import annotations

import logging
import os
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import istr
from yarl import URL

from ratesvc import keys
from ratesvc.accounts import AccountServices
from ratesvc.api.problems import problem_response
from ratesvc.api.tokens import ApiTokens, bearer_token
from ratesvc.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RatesvcError,
    RequestError,
    Unauthorized,
)
from ratesvc.metrics import HttpSeries
from ratesvc.storage.outage import ledger_outage

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import _InfoDict

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
_X_REQUEST_ID = istr("X-Request-Id")
UNMATCHED = "unmatched"  # the metrics label of requests no route took (404, 405)
# Every handler add_route wrapped: the start-up check looks each route's handler up here.
_EDGED: weakref.WeakSet[Handler] = weakref.WeakSet()


class _RequestIds:
    """Generated request ids: 128 random bits each, as ``os.urandom(16)`` per request would give
    (unique, unguessable, and they say nothing of how many requests others made), drawn 256 at
    a time: one getrandom call per 256 requests instead of a keyed hash per request."""

    __slots__ = ("_next",)
    PER_DRAW = 256

    def __init__(self) -> None:
        self._next: Iterator[str] = iter(())

    def forget(self) -> None:
        self._next = iter(())  # a forked child must not hand out its parent's next ids

    def new(self) -> str:
        rid = next(self._next, None)  # a list iterator: each id once, even from two threads
        if rid is None:
            drawn = os.urandom(16 * self.PER_DRAW).hex()
            ids = [drawn[i : i + 32] for i in range(0, len(drawn), 32)]
            rid, self._next = ids[0], iter(ids[1:])
        return rid


_IDS = _RequestIds()
os.register_at_fork(after_in_child=_IDS.forget)
_generated_id = _IDS.new


def request_id(request: web.Request) -> str:
    return str(request.get(_REQUEST_ID_KEY, ""))


def current_account(request: web.Request) -> AccountServices:
    """The account the bearer token belongs to (set by the edge on authenticated routes)."""
    services = request.get(_ACCOUNT_KEY)
    if not isinstance(services, AccountServices):
        raise Unauthorized("this route needs Authorization: Bearer <token>")
    return services


def needs_token(path: str) -> bool:
    """Whether a request for ``path`` must carry an API token: all of /v1/ but the webhooks."""
    return path.startswith("/v1/") and not path.startswith(_SELF_AUTHENTICATED)


def add_route(
    app: web.Application, method: str, path: str, handler: Handler, *, allow_head: bool = False
) -> None:
    """Register ``handler`` behind the edge (``allow_head``: HEAD too, as ``add_get`` does)."""
    resource = app.router.add_resource(path)
    template = resource.canonical
    methods = (method, "HEAD") if allow_head else (method,)
    for each in methods:
        resource.add_route(each, _edged(app, handler, template, each, auth=needs_token(template)))


def _edged(
    app: web.Application, handler: Handler, template: str, method: str | None, *, auth: bool
) -> Handler:
    """``handler`` with the edge around it; ``method`` None: the request's (the unmatched
    resource takes every method)."""
    metrics, tokens = app[keys.METRICS], app[keys.TOKENS]
    limit = app[keys.SETTINGS].max_body_bytes
    by_status: dict[int, HttpSeries] = {}

    async def edge(request: web.Request) -> web.StreamResponse:
        """What every answer gets on its way out: a request id, problem+json for any error (a
        logged 500 for anything unexpected), and its count and latency in the metrics."""
        started = time.perf_counter()
        given = request.headers.get("X-Request-Id")
        rid = given if given and _REQUEST_ID.fullmatch(given) else _generated_id()
        request[_REQUEST_ID_KEY] = rid
        try:
            length = request.content_length
            if length is not None and length > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            if auth:
                request[_ACCOUNT_KEY] = _account(request, tokens, app)
            response = await handler(request)
        except Exception as exc:
            response = _answer_for(request, exc)
        response.headers[_X_REQUEST_ID] = rid
        status = response.status
        found = by_status.get(status) if method is not None else None
        if found is None:  # any token is a method to aiohttp: http_series bounds the labels
            found = metrics.http_series(template, method or request.method, status)
            if method is not None:
                by_status[status] = found
        found.observe(time.perf_counter() - started)
        return response

    _EDGED.add(edge)
    return edge


class _Unmatched(web.AbstractResource):
    """Every path, every method: indexed under ``/`` and registered last, the router reaches it
    only when no other resource took the request."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self._route = web.ResourceRoute("*", handler, self)

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **_kwargs: str) -> URL:
        """Any path ends here; its canonical one stands for them."""
        return URL(self.canonical)

    async def resolve(self, request: web.Request) -> tuple[web.UrlMappingMatchInfo, set[str]]:
        return web.UrlMappingMatchInfo({}, self._route), set()

    def add_prefix(self, prefix: str) -> None:
        """The catch-all belongs to the top application only: mounting it under a prefix would
        hide every route of the parent, so that is a programming error, refused at start."""
        raise RuntimeError(f"the unmatched resource cannot be mounted under {prefix!r}")

    def get_info(self) -> _InfoDict:
        return {}

    def raw_match(self, path: str) -> bool:
        return False  # never reused by add_resource for a real path

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[web.AbstractRoute]:
        yield self._route


def add_unmatched(app: web.Application) -> None:
    """The 404/405 answers; register it after every route. Also installs the start-up check that
    every route is behind the edge."""

    async def unmatched(request: web.Request) -> web.StreamResponse:
        if needs_token(request.path):  # an unknown /v1/ path tells nothing without a token
            request[_ACCOUNT_KEY] = _account(request, app[keys.TOKENS], app)
        allowed: set[str] = set()
        for resource in app.router.resources():
            if not isinstance(resource, _Unmatched):
                allowed |= (await resource.resolve(request))[1]
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    edged = _edged(app, unmatched, UNMATCHED, None, auth=False)
    app.router.register_resource(_Unmatched(edged))
    app.on_startup.insert(0, _check_edged)  # before any resource is opened


async def _check_edged(app: web.Application) -> None:
    """Refuse to start with a route past the edge, or one the unmatched resource would hide
    (the router tries resources indexed under ``/`` in registration order)."""
    bare = [f"{route.method} {route.resource.canonical if route.resource else '?'}"
            for route in app.router.routes() if route.handler not in _EDGED]  # fmt: skip
    if bare:
        raise RuntimeError(
            f"routes registered without the edge (no auth, request id or metrics): "
            f"{', '.join(bare)}; register them with ratesvc.api.middlewares.add_route"
        )
    resources = list(app.router.resources())
    last = max(i for i, r in enumerate(resources) if isinstance(r, _Unmatched))
    hidden = [r.canonical for r in resources[last + 1 :] if _index_key(r.canonical) == "/"]
    if hidden:
        raise RuntimeError(f"routes registered after add_unmatched are never reached: {hidden}")


def _index_key(canonical: str) -> str:
    """The router's index key of a resource (aiohttp's UrlDispatcher: up to the first variable's
    segment, no trailing slash)."""
    if "{" in canonical:
        canonical = canonical.partition("{")[0].rpartition("/")[0]
    return canonical.rstrip("/") or "/"


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


def _account(request: web.Request, tokens: ApiTokens, app: web.Application) -> AccountServices:
    """The account of the request's bearer token (401 otherwise)."""
    header = request.headers.get("Authorization", "")
    name = tokens.remembered(header)
    if name is None:
        token = bearer_token(header)
        if token is None:
            raise Unauthorized(
                "send Authorization: Bearer <token> with an API token of your account"
            )
        name = tokens.account_of(header, token)
        if name is None:
            raise Unauthorized("the bearer token is not known; check RATESVC_API_TOKEN")
    return app[keys.ACCOUNTS][name]
