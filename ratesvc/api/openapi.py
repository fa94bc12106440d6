"""The route table's description, and the OpenAPI 3.1 document generated from it.

Schemas come from the msgspec Structs the handlers actually decode and encode
(``msgspec.json.schema_components``), so the document cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from ratesvc import __version__
from ratesvc.api.problems import PROBLEM_TYPE, Problem

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ERROR_TEXT = {
    400: "Malformed JSON (`malformed_json`)",
    401: "Missing or unknown bearer token (`unauthorized`)",
    404: "Not found (`not_found`)",
    409: "Conflict with the state of the sale or label",
    410: "Quote expired (`quote_expired`)",
    413: "Body too large (`payload_too_large`)",
    422: "Validation failed (`invalid_request`; `errors[]` lists each field)",
    502: "Upstream error (`upstream_error`, `upstream_auth`)",
    503: "Upstream unavailable or throttled (`upstream_unavailable`)",
    504: "Deadline exceeded (`deadline_exceeded`)",
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    response: type | None = None
    request: type | None = None
    status: int = 200
    also: tuple[int, ...] = ()  # other success statuses with the same body (e.g. a replay)
    errors: tuple[int, ...] = ()
    auth: bool = True
    content_type: str = "application/json"
    tags: tuple[str, ...] = field(default=())


def build_openapi(routes: Sequence[Route]) -> dict[str, Any]:
    types: list[Any] = [Problem]
    for route in routes:
        types += [t for t in (route.request, route.response) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "tags": list(route.tags),
            "responses": {},
        }
        if not route.auth:
            operation["security"] = []
        if route.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": by_type[route.request]}},
            }
        ok: dict[str, Any] = {"description": "Success"}
        if route.response is not None:
            ok["content"] = {route.content_type: {"schema": by_type[route.response]}}
        elif route.content_type != "application/json":
            ok["content"] = {route.content_type: {"schema": {"type": "string"}}}
        for status in (route.status, *route.also):
            operation["responses"][str(status)] = ok
        statuses = set(route.errors) | ({401} if route.auth else set())
        for status in sorted(statuses):
            operation["responses"][str(status)] = {
                "description": _ERROR_TEXT.get(status, "Error"),
                "content": {PROBLEM_TYPE: {"schema": by_type[Problem]}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "ratesvc", "version": __version__,
                 "description": "Shipping rates and labels for Cin7 Core sales via ShipStation."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }  # fmt: skip
