"""The query of a list route: known parameters only, optional ``status`` and ``sale_id`` filters,
``limit`` and an opaque ``cursor``; and the ready list's (``ready``, ``search``, ``limit``,
``cursor``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from ratesvc.api.params import (
    FILTER_MAX,
    LIMIT_DEFAULT,
    LIMIT_MAX,
    SALES_LIMIT_DEFAULT,
    SALES_LIMIT_MAX,
    SEARCH_MAX,
    Owned,
    check_cursor,
    is_text,
    text_param,
    whole_number,
)
from ratesvc.errors import InvalidRequest
from ratesvc.operator.ready_sales import decode_cursor


@dataclass(frozen=True)
class ListQuery:
    status: str | None
    sale_id: str | None
    limit: int
    cursor: str | None
    search: str | None = None  # GET /v1/labels: order number, sale id or tracking number


async def list_query(
    query: Mapping[str, str],
    *,
    statuses: tuple[str, ...],
    account: str,
    cursor_pattern: str,
    lookup: Callable[[str], Awaitable[Owned | None]],
    extra: tuple[str, ...] = (),
) -> ListQuery:
    """The parameters of a list request; 422 naming the first bad one. ``lookup`` finds the row
    a cursor names (it must be the account's)."""
    refuse_unknown(query, ("status", "sale_id", "limit", "cursor", *extra))
    status = query.get("status")
    if status is not None and status not in statuses:
        raise InvalidRequest.field("status", f"must be one of {', '.join(statuses)}")
    sale_id = query.get("sale_id")
    if sale_id is not None:
        sale_id = text_param(sale_id, name="sale_id", max_length=FILTER_MAX)
    limit = _limit(query, LIMIT_DEFAULT, LIMIT_MAX)
    cursor = await check_cursor(
        query.get("cursor"), pattern=cursor_pattern, account=account, lookup=lookup
    )
    search = query.get("search") if "search" in extra else None
    if search is not None:
        search = (
            text_param(search.strip(), name="search", max_length=FILTER_MAX)
            if search.strip()
            else None
        )
    return ListQuery(status=status, sale_id=sale_id, limit=limit, cursor=cursor, search=search)


@dataclass(frozen=True)
class SalesQuery:
    search: str | None
    limit: int
    after: tuple[int, str] | None  # the cursor: where the previous page ended


def sales_query(query: Mapping[str, str]) -> SalesQuery:
    """``GET /v1/sales``: ``ready=true`` (the only list there is), an optional ``search`` (empty
    or blank: none), ``limit``, ``cursor``; 422 naming the first bad one."""
    refuse_unknown(query, ("ready", "search", "limit", "cursor"))
    if query.get("ready") != "true":
        raise InvalidRequest.field("ready", "must be true: only the ready-to-ship list is served")
    search = query.get("search")
    if search is not None:
        if len(search) > SEARCH_MAX or not is_text(search):
            raise InvalidRequest.field("search", f"must be at most {SEARCH_MAX} characters of text")
        search = search.strip() or None
    return SalesQuery(
        search=search, limit=_limit(query, SALES_LIMIT_DEFAULT, SALES_LIMIT_MAX),
        after=decode_cursor(cursor) if (cursor := query.get("cursor")) is not None else None,
    )  # fmt: skip


def refuse_unknown(query: Mapping[str, str], known: tuple[str, ...]) -> None:
    """422 naming the first parameter that is not known, or that is given more than once (which
    one would count is anyone's guess)."""
    unknown = set(query) - set(known)
    if unknown:
        raise InvalidRequest.field(sorted(unknown)[0], "is not a known query parameter")
    if len(query) != len(set(query)):  # a MultiDict (aiohttp's query) lists each occurrence
        repeated = sorted(k for k in set(query) if list(query).count(k) > 1)[0]
        raise InvalidRequest.field(repeated, "must be given once")


def _limit(query: Mapping[str, str], default: int, high: int) -> int:
    raw = query.get("limit")
    return default if raw is None else whole_number(raw, name="limit", low=1, high=high)
