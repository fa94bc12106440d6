"""``GET /v1/labels?search=``: a person finds a label by the sale's order number, the sale id or a
tracking number, whatever the label's age; labels carry their sale's order number."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.api.test_labels import EXPLICIT, buy, labels  # noqa: F401 (the fixture)
from tests.conftest import AUTH

MULTIBOX = {"sale_id": "sale-multibox", "carrier_code": "fedex", "service_code": "fedex_ground"}


async def found(client: TestClient, search: str) -> list[str]:
    response = await client.get("/v1/labels", params={"search": search}, headers=AUTH)
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return [label["label_id"] for label in body["labels"]]


async def test_a_sale_label_is_found_by_order_number_sale_id_or_tracking_number(
    labels: TestClient,  # noqa: F811
) -> None:
    sale_label = await buy(labels, MULTIBOX)
    other = await buy(labels, EXPLICIT)
    tracking = sale_label["packages"][1]["tracking_number"]

    assert sale_label["order_number"] == "SO-1002"
    assert other["order_number"] is None
    assert await found(labels, "SO-1002") == [sale_label["label_id"]]
    assert await found(labels, "so-10") == [sale_label["label_id"]]  # any case, any part
    assert await found(labels, "multibox") == [sale_label["label_id"]]
    assert await found(labels, tracking[-8:]) == [sale_label["label_id"]]
    assert await found(labels, "  ") == [other["label_id"], sale_label["label_id"]]  # no filter
    assert await found(labels, "%") == []  # taken literally, not as a wildcard
    assert await found(labels, "SO_1002") == []


async def test_a_label_bought_from_a_quote_carries_the_sales_order_number(
    labels: TestClient,  # noqa: F811
) -> None:
    rates = await (await labels.post("/v1/rates", json={"sale_id": "sale-simple"},
                                     headers=AUTH)).json()  # fmt: skip
    label = await buy(labels, {"quote_id": rates["quotes"][0]["quote_id"]})

    assert label["order_number"] == "SO-1001"
    assert await found(labels, "SO-1001") == [label["label_id"]]


@pytest.mark.parametrize("query", ["search=" + "x" * 101, "search=a&search=b"])
async def test_a_bad_search_is_422_naming_it(labels: TestClient, query: str) -> None:  # noqa: F811
    response = await labels.get(f"/v1/labels?{query}", headers=AUTH)
    problem = await response.json()

    assert response.status == 422, problem
    assert problem["errors"][0]["field"] == "search"
