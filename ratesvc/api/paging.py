"""The query of a list route: known parameters only, an optional ``status`` filter, ``limit``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ratesvc.errors import InvalidRequest


def list_query(
    query: Mapping[str, str], *, filters: Iterable[str], statuses: tuple[str, ...]
) -> tuple[str | None, int]:
    """(status, limit) of a list request; 422 naming the first bad parameter. ``filters`` are the
    route's other parameters besides ``status``, ``limit`` and ``cursor``."""
    unknown = set(query) - {"status", "limit", "cursor", *filters}
    if unknown:
        raise InvalidRequest.field(sorted(unknown)[0], "is not a known query parameter")
    status = query.get("status")
    if status is not None and status not in statuses:
        raise InvalidRequest.field("status", f"must be one of {', '.join(statuses)}")
    raw_limit = query.get("limit", "50")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 200:
        raise InvalidRequest.field("limit", "must be a whole number from 1 to 200")
    return status, int(raw_limit)
