"""API token lookup: the remembered headers change nothing a client can observe."""

from __future__ import annotations

import hashlib

from aiohttp.test_utils import TestClient

from ratesvc.api.tokens import ApiTokens, bearer_token
from tests.conftest import TOKEN


def _tokens() -> ApiTokens:
    return ApiTokens({hashlib.sha256(b"right-token-0123456789").digest(): "acme"})


def test_only_headers_of_known_tokens_are_remembered() -> None:
    tokens = _tokens()

    assert tokens.account_of("Bearer wrong-token-0123456789", "wrong-token-0123456789") is None
    assert tokens.remembered("Bearer wrong-token-0123456789") is None
    assert tokens.account_of("Bearer right-token-0123456789", "right-token-0123456789") == "acme"
    assert tokens.remembered("Bearer right-token-0123456789") == "acme"
    assert tokens.remembered("Bearer right-token-012345678") is None  # a prefix is not a match
    assert "right" not in repr(tokens)


def test_the_remembered_spellings_are_bounded() -> None:
    tokens = _tokens()
    count = ApiTokens.MAX_HEADERS + 1
    spellings = [f"Bearer {' ' * n}right-token-0123456789" for n in range(count)]
    for header in spellings:
        assert tokens.account_of(header, "right-token-0123456789") == "acme"

    assert tokens.remembered(spellings[-1]) == "acme"
    assert tokens.remembered(spellings[0]) is None  # started over when full


def test_bearer_token_takes_any_case_of_the_scheme_and_refuses_the_rest() -> None:
    assert bearer_token("bearer  tok ") == "tok"
    assert bearer_token("BEARER tok") == "tok"
    for header in ("", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Bearer \udcff"):
        assert bearer_token(header) is None


async def test_a_remembered_header_and_other_spellings_answer_the_same(service: TestClient) -> None:
    spellings = [f"Bearer {TOKEN}", f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "]
    statuses = [
        (await service.get("/v1/status", headers={"Authorization": header})).status
        for header in [*spellings, "Bearer wrong-token-0123456789", f"Bearer {TOKEN}x"]
    ]

    assert statuses == [200, 200, 200, 200, 401, 401]
