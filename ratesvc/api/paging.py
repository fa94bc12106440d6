"""The query of a list route: known parameters only, optional ``status`` and ``sale_id`` filters,
``limit`` and an opaque ``cursor``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from ratesvc.api.params import (
    FILTER_MAX,
    LIMIT_DEFAULT,
    LIMIT_MAX,
    Owned,
    check_cursor,
    text_param,
    whole_number,
)
from ratesvc.errors import InvalidRequest


@dataclass(frozen=True)
class ListQuery:
    status: str | None
    sale_id: str | None
    limit: int
    cursor: str | None


async def list_query(
    query: Mapping[str, str],
    *,
    statuses: tuple[str, ...],
    account: str,
    cursor_pattern: str,
    lookup: Callable[[str], Awaitable[Owned | None]],
) -> ListQuery:
    """The parameters of a list request; 422 naming the first bad one. ``lookup`` finds the row
    a cursor names (it must be the account's)."""
    unknown = set(query) - {"status", "sale_id", "limit", "cursor"}
    if unknown:
        raise InvalidRequest.field(sorted(unknown)[0], "is not a known query parameter")
    status = query.get("status")
    if status is not None and status not in statuses:
        raise InvalidRequest.field("status", f"must be one of {', '.join(statuses)}")
    sale_id = query.get("sale_id")
    if sale_id is not None:
        sale_id = text_param(sale_id, name="sale_id", max_length=FILTER_MAX)
    raw_limit = query.get("limit")
    limit = LIMIT_DEFAULT
    if raw_limit is not None:
        limit = whole_number(raw_limit, name="limit", low=1, high=LIMIT_MAX)
    cursor = await check_cursor(
        query.get("cursor"), pattern=cursor_pattern, account=account, lookup=lookup
    )
    return ListQuery(status=status, sale_id=sale_id, limit=limit, cursor=cursor)
