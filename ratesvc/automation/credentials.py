"""Checking the credential Cin7 Core sends with a webhook delivery, in constant time.

Both sides are hashed (SHA-256) before ``hmac.compare_digest``, so neither the length nor the
content of the configured secret leaks through timing. For basic auth, user name and password are
both compared whatever the first comparison says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

from ratesvc.config import WebhookCredential


def _same(given: str, expected_digest: bytes) -> bool:
    # surrogateescape: a header that is not UTF-8 reaches us with its bytes kept as surrogates;
    # hashed as those bytes it is simply a wrong credential.
    given_bytes = given.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(hashlib.sha256(given_bytes).digest(), expected_digest)


def credential_ok(credential: WebhookCredential, headers: Mapping[str, str]) -> bool:
    """``headers``: the delivery's headers (case-insensitive mapping)."""
    expected = credential.secret.digest()
    if credential.kind == "header":
        assert credential.header is not None
        return _same(headers.get(credential.header, ""), expected)
    scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
    if credential.kind == "bearer":
        return scheme.lower() == "bearer" and _same(value.strip(), expected)
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):  # ValueError: not ASCII
        return False
    username, _, password = decoded.partition(":")
    user_ok = _same(username, hashlib.sha256((credential.username or "").encode()).digest())
    password_ok = _same(password, expected)
    return user_ok and password_ok
