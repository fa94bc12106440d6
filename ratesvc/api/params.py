"""What a request says outside its body: numbers, cursors and text in paths, queries and headers.

Every number taken from a path or a query goes through :func:`whole_number`: a regex on ASCII
digits with a length bound, before ``int()``. ``str.isdigit()`` is true for "²" and "٣" (which
``int()`` then refuses or reads), and ``int()`` refuses strings over 4,300 digits.

The bounds and patterns here are also what the OpenAPI document declares (:mod:`.openapi`), so
what the document promises and what the handlers accept are the same numbers.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Protocol

from ratesvc.errors import InvalidRequest

_DIGITS = re.compile(r"[0-9]{1,9}")

LIMIT_DEFAULT = 50
LIMIT_MAX = 200
SALES_LIMIT_DEFAULT = 25  # GET /v1/sales: a screen of the ready list
SALES_LIMIT_MAX = 100
SEARCH_MAX = 100
PACKAGE_MAX = 999  # far above any label's package count: a larger n is refused, a smaller one 404s
FILTER_MAX = 64  # the longest sale_id a request body may carry (SaleRef)
IDEMPOTENCY_KEY_MAX = 255
# Label and event ids are a prefix and token_urlsafe text.
ID_PATTERN = r"^[A-Za-z0-9_\-]{1,100}$"
LABEL_CURSOR = r"^lb_[A-Za-z0-9_\-]{1,64}$"
EVENT_CURSOR = r"^ev_[A-Za-z0-9_\-]{1,64}$"
SALES_CURSOR = r"^sl_[A-Za-z0-9_\-]{1,400}$"


def whole_number(raw: str, *, name: str, low: int, high: int) -> int:
    """``raw`` as an int in [low, high], or 422 ``invalid_request`` naming ``name``."""
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise InvalidRequest.field(name, f"must be a whole number from {low} to {high}")
    return int(raw)


def is_text(value: str) -> bool:
    """Whether a header value is text: aiohttp keeps bytes that are not UTF-8 as lone
    surrogates, which cannot be encoded (hashed, stored, logged) again."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def text_param(raw: str, *, name: str, max_length: int) -> str:
    """A free-text parameter: 1 to ``max_length`` characters, not blank, UTF-8, no control
    characters (a NUL would end a SQL pattern early)."""
    if (
        not raw.strip() or len(raw) > max_length or not is_text(raw)
        or any(unicodedata.category(c) == "Cc" for c in raw)
    ):  # fmt: skip
        raise InvalidRequest.field(name, f"must be 1 to {max_length} characters of text")
    return raw


class Owned(Protocol):
    @property
    def account(self) -> str: ...


async def check_cursor(
    cursor: str | None,
    *,
    pattern: str,
    account: str,
    lookup: Callable[[str], Awaitable[Owned | None]],
) -> str | None:
    """A list's ``cursor``: the id the previous page ended with, of a row of this account.
    Anything else is 422, never an empty page that looks like the end of the list."""
    if cursor is None:
        return None
    if re.fullmatch(pattern, cursor) is None:
        raise InvalidRequest.field("cursor", "is not a cursor: pass next_cursor of the last page")
    row = await lookup(cursor)
    if row is None or row.account != account:
        raise InvalidRequest.field("cursor", "names nothing in this list: start again without it")
    return cursor
