"""The credential Cin7 Core sends with a delivery: bearer, basic or a custom header."""

from __future__ import annotations

import base64

from multidict import CIMultiDict

from ratesvc.automation.credentials import credential_ok
from ratesvc.config import Secret, WebhookCredential

BEARER = WebhookCredential(kind="bearer", secret=Secret("hook-token-0123456789"))
BASIC = WebhookCredential(kind="basic", secret=Secret("hook-pass-0123456789"), username="cin7")
HEADER = WebhookCredential(
    kind="header", secret=Secret("hook-value-012345678"), header="X-Hook-Key"
)


def basic(user: str, password: str) -> CIMultiDict[str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return CIMultiDict({"Authorization": f"Basic {encoded}"})


def test_a_bearer_token_must_match_exactly() -> None:
    assert credential_ok(BEARER, CIMultiDict({"Authorization": "Bearer hook-token-0123456789"}))
    assert credential_ok(BEARER, CIMultiDict({"authorization": "bearer hook-token-0123456789"}))
    assert not credential_ok(BEARER, CIMultiDict({"Authorization": "Bearer hook-token-012345678"}))
    assert not credential_ok(BEARER, CIMultiDict({"Authorization": "Basic hook-token-0123456789"}))
    assert not credential_ok(BEARER, CIMultiDict())


def test_basic_auth_needs_both_user_and_password() -> None:
    assert credential_ok(BASIC, basic("cin7", "hook-pass-0123456789"))
    assert not credential_ok(BASIC, basic("someone", "hook-pass-0123456789"))
    assert not credential_ok(BASIC, basic("cin7", "wrong"))
    assert not credential_ok(BASIC, CIMultiDict({"Authorization": "Basic !!not-base64!!"}))


def test_a_custom_header_is_read_by_its_name_in_any_case() -> None:
    assert credential_ok(HEADER, CIMultiDict({"x-hook-key": "hook-value-012345678"}))
    assert not credential_ok(HEADER, CIMultiDict({"X-Hook-Key": "hook-value-01234567"}))
    assert not credential_ok(HEADER, CIMultiDict({"Authorization": "Bearer hook-value-012345678"}))
