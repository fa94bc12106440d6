"""problem+json (RFC 9457) answers, and decoding request bodies into Structs with field paths."""

from __future__ import annotations

import math
import re
from typing import Annotated, TypeVar

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ratesvc.codec import decoder_for
from ratesvc.errors import (
    PROBLEM_CODES,
    FieldError,
    InvalidRequest,
    MalformedJson,
    RatesvcError,
    StorageUnavailable,
    UpstreamThrottled,
)

T = TypeVar("T")

PROBLEM_TYPE = "application/problem+json"
_encoder = msgspec.json.Encoder()
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD_PREFIX = re.compile(r"^(?P<field>[a-z_][a-z0-9_]*): (?P<message>.+)$", re.DOTALL)
# When a throttled upstream does not say when its window resets: both upstream windows are a
# minute long, so a minute is always enough.
_THROTTLE_RETRY_S = 60


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The body of every 4xx/5xx answer. ``code`` is stable and machine-readable."""

    type: str
    title: str
    status: int
    code: Annotated[str, msgspec.Meta(extra_json_schema={"enum": list(PROBLEM_CODES)})]
    detail: str
    errors: list[FieldError] = []
    request_id: str | None = None
    label_id: str | None = None  # the label a 409 is about (already_labelled)
    retry_after_s: int | None = None  # a rate limit's or the ledger's 503: also Retry-After


def retry_after_s(error: RatesvcError) -> int | None:
    """Whole seconds until a throttled upstream has room again, or a store out of reach is
    worth asking again (None: say nothing)."""
    if isinstance(error, StorageUnavailable):
        return error.retry_after_s
    if not isinstance(error, UpstreamThrottled):
        return None
    if error.reset_after_s is None or not math.isfinite(error.reset_after_s):
        return _THROTTLE_RETRY_S
    return max(1, math.ceil(error.reset_after_s))


def problem_response(error: RatesvcError, request_id: str | None) -> web.Response:
    errors = error.errors if isinstance(error, InvalidRequest) else []
    retry_after = retry_after_s(error)
    problem = Problem(
        type="about:blank",
        title=error.title,
        status=error.status,
        code=error.code,
        detail=error.detail,
        errors=errors,
        request_id=request_id,
        label_id=error.label_id,
        retry_after_s=retry_after,
    )
    response = web.Response(body=_encoder.encode(problem), status=error.status)
    response.content_type = PROBLEM_TYPE
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def field_error_from_validation(exc: msgspec.ValidationError) -> FieldError:
    """``Expected `float` > 0.0 - at `$.packages[0].weight.value``` → field + message."""
    match = _AT.match(str(exc))
    message, path = (match["message"], match["path"] or "") if match else (str(exc), "")
    path = path.lstrip(".")
    prefixed = _FIELD_PREFIX.match(message)
    if prefixed:  # a __post_init__ check names its field: "country: must be ..."
        path = f"{path}.{prefixed['field']}" if path else prefixed["field"]
        message = prefixed["message"]
    unknown = re.match(r"Object contains unknown field `(?P<name>[^`]+)`", message)
    if unknown:
        path = f"{path}.{unknown['name']}" if path else unknown["name"]
        message = "is not a known field"
    missing = re.match(r"Object missing required field `(?P<name>[^`]+)`", message)
    if missing:
        path = f"{path}.{missing['name']}" if path else missing["name"]
        message = "is required"
    return FieldError(field=path or "(body)", message=message)


async def read_json(request: web.Request) -> bytes:
    """The raw body of a JSON request (400 ``malformed_json`` for another content type)."""
    if request.headers.get("Content-Type") != "application/json":  # else nothing to parse
        content_type = request.content_type
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise MalformedJson(
                f"send a JSON body with Content-Type: application/json (got {content_type})"
            )
    return await read_body(request)


async def read_body(request: web.Request) -> bytes:
    """The raw body; 400 ``malformed_json`` when it is not what its ``Content-Encoding`` says
    (aiohttp decodes gzip/deflate/br itself and fails while reading)."""
    try:
        return await request.read()
    except (RequestPayloadError, HttpProcessingError) as exc:
        raise MalformedJson(
            f"the body cannot be read as sent (Content-Encoding "
            f"{request.headers.get('Content-Encoding', 'none')}): {exc}"
        ) from exc


async def decode_body(request: web.Request, kind: type[T]) -> T:
    """Read and validate a JSON body: 400 ``malformed_json`` or 422 ``invalid_request``."""
    return decode_json(await read_json(request), kind)


def decode_json(raw: bytes, kind: type[T]) -> T:
    """Validate a JSON body: 400 ``malformed_json`` or 422 ``invalid_request``."""
    try:
        return decoder_for(kind).decode(raw)
    except msgspec.ValidationError as exc:
        error = field_error_from_validation(exc)
        raise InvalidRequest(f"{error.field} {error.message}", [error]) from exc
    except msgspec.DecodeError as exc:
        raise MalformedJson(f"the body is not valid JSON: {exc}") from exc
