"""The route table's description, and the OpenAPI 3.1 document generated from it.

Schemas come from the msgspec Structs the handlers actually decode and encode
(``msgspec.json.schema_components``), so the document cannot drift from the code. What a Struct
cannot say is added here, each from the one place the code takes it from: parameters and their
bounds (:mod:`.params`), the enums of status fields, the cross-field rules of request bodies (as
``oneOf``), ``format: date-time`` on ``*_at`` timestamps kept as text, the problem ``code`` enum
(:data:`ratesvc.errors.PROBLEM_CODES`), the security schemes, and examples.

The document is good enough to generate a client from and to fuzz (``.ci/run`` runs schemathesis
against it): every status a route answers is listed, including 405 and 413, which any route
gives.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

import msgspec
from aiohttp import web

from ratesvc import __version__
from ratesvc.api.params import ID_PATTERN, PACKAGE_MAX
from ratesvc.api.problems import PROBLEM_TYPE, Problem

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Schema = dict[str, Any]

# status -> (description, the codes a problem with that status carries)
_ERRORS: dict[int, tuple[str, tuple[str, ...]]] = {
    400: ("The body is not JSON, or not of a JSON content type", ("malformed_json",)),
    401: ("Missing or unknown credential", ("unauthorized",)),
    404: ("The label, quote or Cin7 Core sale does not exist", ("not_found",)),
    405: ("The path does not take this method (the Allow header lists those it takes)",
          ("method_not_allowed",)),
    409: ("Conflict with the state of the sale or label",
          ("sale_not_ready", "already_shipped", "already_labelled", "sale_changed",
           "reconciling", "already_voided", "void_rejected")),
    410: ("The quote expired: rate again", ("quote_expired",)),
    413: ("The body is larger than the configured limit (default 1 MiB)", ("payload_too_large",)),
    422: ("Validation failed (`errors[]` lists each field)",
          ("invalid_request", "idempotency_key_reused", "customs_required",
           "customs_incomplete")),
    502: ("An upstream answered with an error we cannot fix", ("upstream_error", "upstream_auth")),
    503: ("Upstream down, or rate-limited past the deadline (then with Retry-After); "
          "`storage_unavailable`: the ledger (PostgreSQL; then with Retry-After) or the store "
          "replicas share quotes in (Redis) cannot be reached now — nothing is lost, try again "
          "shortly", ("upstream_unavailable", "storage_unavailable")),
    504: ("Nothing came back before the request deadline", ("deadline_exceeded",)),
}  # fmt: skip
_ALWAYS = (405, 413)  # any route: another method; a body over the limit
# A route that needs nothing but the ledger can answer 503 only for it.
_LEDGER_503 = ("The ledger (PostgreSQL) cannot be reached now; what it holds is kept: retry "
               "after Retry-After seconds", ("storage_unavailable",))  # fmt: skip
_RETRY_AFTER = {
    "description": "Whole seconds until the upstream rate limit has room again, or the ledger "
    "is worth asking again (a rate limit's or the ledger's 503)",
    "schema": {"type": "integer", "minimum": 1},
}

Where = Literal["path", "query", "header"]


@dataclass(frozen=True)
class Param:
    """A parameter outside the body, as the document declares it."""

    name: str
    where: Where
    schema: Schema
    description: str
    required: bool = False
    example: object = None

    def declared(self) -> Schema:
        declared: Schema = {"name": self.name, "in": self.where, "description": self.description,
                            "required": self.required, "schema": self.schema}  # fmt: skip
        if self.example is not None:
            declared["example"] = self.example
        return declared


_ID = {"type": "string", "pattern": ID_PATTERN}
PATH_PARAMS = {
    p.name: p
    for p in (
        Param("label_id", "path", _ID, "A label id (`lb_...`)", True, "lb_Q1wExampleLabel"),
        Param("quote_id", "path", {"type": "string", "minLength": 1, "maxLength": 100},
              "A quote id from POST /v1/rates", True, "qt_7hX2Example"),
        Param("n", "path", {"type": "integer", "minimum": 1, "maximum": PACKAGE_MAX},
              "A package's number in the label, from 1", True, 1),
        Param("account", "path", {"type": "string", "minLength": 1, "maxLength": 100},
              "The account name (`default` when configured from the environment)", True,
              "default"),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Route:
    """One route: what serves it, and what the document says about it."""

    method: str
    path: str
    handler: Handler
    summary: str
    response: type | None = None
    request: type | None = None
    request_schema: Schema | None = None  # a body that is no Struct (the webhook's event)
    request_example: object = None
    status: int = 200
    also: tuple[tuple[int, str], ...] = ()  # other statuses with the same body, and when
    errors: tuple[int, ...] = ()
    ledger: bool = False  # reads or writes the ledger: 503 while its database is out of reach
    auth: bool = True  # the API token (bearer); see ``security`` for other credentials
    security: tuple[str, ...] = ()  # the schemes of a route that authenticates itself
    params: tuple[Param, ...] = ()  # query parameters and headers; path ones are implied
    content_type: str = "application/json"
    tags: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Extras:
    """What the Structs' schemas do not say: ``enums`` of text fields (``"Label.status"``),
    cross-field ``rules`` of request Structs, and named ``schemes`` besides ``bearer``."""

    enums: Mapping[str, Sequence[str]] = field(default_factory=dict)
    rules: Mapping[type, Schema] = field(default_factory=dict)
    schemes: Mapping[str, Schema] = field(default_factory=dict)


def build_openapi(routes: Sequence[Route], extras: Extras | None = None) -> dict[str, Any]:
    extras = extras or Extras()
    types: list[Any] = [Problem]
    for route in routes:
        types += [t for t in (route.request, route.response) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    by_type = dict(zip(types, schemas, strict=True))
    _annotate(components, extras)
    for kind, rule in extras.rules.items():
        components[kind.__name__].update(rule)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, by_type)
    return {
        "openapi": "3.1.0",
        "info": {"title": "ratesvc", "version": __version__,
                 "description": "Shipping rates and labels for Cin7 Core sales via ShipStation. "
                 "Every 4xx/5xx is application/problem+json with a stable `code`."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An API token of the account (RATESVC_API_TOKEN)"},
                **extras.schemes,
            },
        },
        "security": [{"bearer": []}],
    }  # fmt: skip


def _operation(route: Route, by_type: dict[Any, Schema]) -> Schema:
    operation: Schema = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "tags": list(route.tags),
    }
    params = [_path_param(name) for name in re.findall(r"{(\w+)}", route.path)]
    params += [p.declared() for p in route.params]
    if params:
        operation["parameters"] = params
    if route.security:
        operation["security"] = [{name: []} for name in route.security]
    elif not route.auth:
        operation["security"] = []
    body = by_type[route.request] if route.request is not None else route.request_schema
    if body is not None:
        content: Schema = {"schema": body}
        if route.request_example is not None:
            content["example"] = route.request_example
        operation["requestBody"] = {"required": True, "content": {"application/json": content}}
    responses: dict[str, Any] = {}
    ok: Schema = {}
    if route.response is not None:
        ok["content"] = {route.content_type: {"schema": by_type[route.response]}}
    elif route.content_type != "application/json":
        ok["content"] = {route.content_type: {"schema": {"type": "string"}}}
    for status, description in ((route.status, route.summary), *route.also):
        responses[str(status)] = {"description": description, **ok}
    errors = set(route.errors) | set(_ALWAYS) | ({503} if route.ledger else set())
    if route.auth or route.security:
        errors.add(401)
    if body is not None:
        errors |= {400, 422}
    ledger_only = route.ledger and 503 not in route.errors
    for status in sorted(errors):
        responses[str(status)] = _problem_response(status, by_type[Problem], ledger_only)
    operation["responses"] = responses
    return operation


def _path_param(name: str) -> Schema:
    known = PATH_PARAMS.get(name)
    if known is None:
        known = Param(name, "path", {"type": "string", "minLength": 1}, name, True)
    return known.declared()


def _problem_response(status: int, problem: Schema, ledger_only: bool = False) -> Schema:
    description, codes = _ERRORS.get(status, ("Error", ("internal_error",)))
    if status == 503 and ledger_only:
        description, codes = _LEDGER_503
    example = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
               "code": codes[0], "detail": description}  # fmt: skip
    response: Schema = {
        "description": f"{description} (`{'`, `'.join(codes)}`)",
        "content": {PROBLEM_TYPE: {"schema": problem, "example": example}},
    }
    if status == 503:
        response["headers"] = {"Retry-After": _RETRY_AFTER}
    if status == 405:
        response["headers"] = {"Allow": {"description": "The methods the path takes",
                                         "schema": {"type": "string"}}}  # fmt: skip
    return response


def _annotate(components: dict[str, Schema], extras: Extras) -> None:
    """Enums of text fields and ``format: date-time`` on ``*_at`` text timestamps."""
    for dotted, values in extras.enums.items():
        name, _, prop = dotted.partition(".")
        _each_string(components[name]["properties"][prop], {"enum": list(values)})
    for schema in components.values():
        for prop, spec in schema.get("properties", {}).items():
            if prop.endswith("_at"):
                _each_string(spec, {"format": "date-time"})


def _each_string(spec: Schema, extra: Schema) -> None:
    """Add ``extra`` to the string branch of ``spec`` (itself, or an ``anyOf`` member)."""
    for branch in spec.get("anyOf", [spec]):
        if branch.get("type") == "string":
            branch.update(extra)
