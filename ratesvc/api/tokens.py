"""API tokens to account names, looked up on every authenticated request."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from ratesvc.api.params import is_text


class ApiTokens:
    """Each token is known by its SHA-256 digest (built once from the settings); an exact
    ``Authorization`` header that named a known token is remembered as it came, so a client
    sending the same header again is found with one dict lookup instead of a parse and a hash.

    Only headers of known tokens are remembered (at most :attr:`MAX_HEADERS` spellings; more, and
    the memory starts over), so nobody without a token changes what is held. Timing: a lookup
    hashes the header with the interpreter's per-process secret string hash and compares contents
    only against an entry whose full hash is equal, so how long a guess takes depends on that
    secret hash, not on how much of a real token it has right. The same held for the digest
    lookup alone; both need the default random hashing (never a fixed ``PYTHONHASHSEED``).
    """

    __slots__ = ("_by_digest", "_by_header")
    MAX_HEADERS = 64

    def __init__(self, by_digest: Mapping[bytes, str]) -> None:
        self._by_digest = dict(by_digest)
        self._by_header: dict[str, str] = {}

    def remembered(self, header: str) -> str | None:
        """The account of an ``Authorization`` header seen before with a known token."""
        return self._by_header.get(header)

    def account_of(self, header: str, token: str) -> str | None:
        """The account ``token`` (a UTF-8 string) belongs to; remembers ``header`` when known."""
        name = self._by_digest.get(hashlib.sha256(token.encode()).digest())
        if name is not None:
            if len(self._by_header) >= self.MAX_HEADERS:
                self._by_header.clear()
            self._by_header[header] = name
        return name

    def __repr__(self) -> str:  # what it holds are credentials
        return f"ApiTokens({len(self._by_digest)} tokens)"


def bearer_token(header: str) -> str | None:
    """The token of ``Bearer <token>`` (any case of the scheme); None when there is none or it
    is not text (aiohttp keeps bytes that are not UTF-8 as lone surrogates)."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or not is_text(token):
        return None
    return token
