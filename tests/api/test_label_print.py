"""``GET /v1/labels/{label_id}/label.pdf``: every bought package's label in one PDF, in box order;
404 for what is not here, 409 ``already_voided`` for a voided label."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pypdf
import pytest
from aiohttp.test_utils import TestClient

from ratesvc import keys
from ratesvc.app import create_app
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.api.test_labels import EXPLICIT, until
from tests.conftest import ACME_AUTH, AUTH, MakeService, acme_settings
from tests.ledger_sql import ledger_sql

OTHER = {"Authorization": "Bearer other-token-0123456789"}

MULTIBOX = {"sale_id": "sale-multibox", "carrier_code": "fedex", "service_code": "fedex_ground",
            "write_back": False}  # fmt: skip


@pytest.fixture
async def printing(make_labelling: MakeService) -> TestClient:
    return await make_labelling(RATESVC_LABEL_SETTLE_S="0")


async def buy(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/labels", json=body, headers=AUTH)
    label: dict[str, Any] = await response.json()
    assert response.status == 201, label
    return label


async def problem_of(client: TestClient, url: str, status: int, **headers: str) -> dict[str, Any]:
    response = await client.get(url, headers={**AUTH, **headers})
    problem: dict[str, Any] = await response.json()
    assert response.status == status, problem
    assert response.content_type == "application/problem+json"
    return problem


async def test_a_two_box_sale_prints_as_one_pdf_of_two_pages_in_box_order(
    printing: TestClient,
) -> None:
    label = await buy(printing, MULTIBOX)

    response = await printing.get(f"/v1/labels/{label['label_id']}/label.pdf", headers=AUTH)

    assert response.status == 200
    assert response.content_type == "application/pdf"
    assert response.headers["Content-Disposition"] == (
        f'inline; filename="labels-{label["label_id"]}.pdf"'
    )
    pages = pypdf.PdfReader(io.BytesIO(await response.read())).pages
    assert len(pages) == 2
    for page, package in zip(pages, label["packages"], strict=True):
        assert package["tracking_number"] in page.extract_text()


async def test_a_voided_label_is_not_printed(printing: TestClient) -> None:
    label = await buy(printing, MULTIBOX)
    voided = await printing.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)
    assert voided.status == 200

    problem = await problem_of(printing, f"/v1/labels/{label['label_id']}/label.pdf", 409)

    assert problem["code"] == "already_voided"
    assert label["label_id"] in problem["detail"]


async def test_a_package_whose_pdf_is_gone_is_named(printing: TestClient, tmp_path: Path) -> None:
    """Box 2's PDF is a file an older version wrote (before the ledger kept PDFs), lost on
    disk; box 1's is in the ledger."""
    label = await buy(printing, MULTIBOX)
    url, label_id = printing.app[keys.SETTINGS].ledger_url, label["label_id"]
    lost = str(tmp_path / "data" / "labels" / label_id / "2.pdf")
    await ledger_sql(url, "DELETE FROM documents WHERE label_id = ? AND n = 2", (label_id,))
    await ledger_sql(url, "UPDATE packages SET pdf_path = ? WHERE label_id = ? AND n = 2",
                     (lost, label_id))  # fmt: skip

    problem = await problem_of(printing, f"/v1/labels/{label['label_id']}/label.pdf", 404)

    assert problem["code"] == "not_found"
    assert problem["detail"] == "package 2 has no label PDF here: reprint it from ShipStation"


async def test_a_label_with_a_box_still_being_bought_is_not_printed_short_of_it(
    printing: TestClient, sandbox: ShipStationSandbox
) -> None:
    sandbox.set_latency(700)  # the purchase is under way for a while
    buying = asyncio.create_task(printing.post("/v1/labels", json=MULTIBOX, headers=AUTH))
    listed: list[dict[str, Any]] = []

    async def recorded() -> bool:
        listed[:] = (await (await printing.get("/v1/labels", headers=AUTH)).json())["labels"]
        return bool(listed)

    await until(recorded)
    label_id = listed[0]["label_id"]

    problem = await problem_of(printing, f"/v1/labels/{label_id}/label.pdf", 409)

    assert problem["code"] == "reconciling"
    assert problem["detail"].startswith(f"package 1 of label {label_id} is still being bought")
    assert (await buying).status == 201
    printed = await printing.get(f"/v1/labels/{label_id}/label.pdf", headers=AUTH)
    assert printed.status == 200


async def acme_label(
    aiohttp_client: Any, tmp_path: Path, sandbox_url: str
) -> tuple[TestClient, str]:
    """The service of two accounts, ``acme`` (``ACME_AUTH``) and ``other`` (``OTHER``), and the
    id of a label ``acme`` bought."""
    other = (
        '[accounts.other]\napi_tokens = ["other-token-0123456789"]\n'
        'ship_from = { postal_code = "78703", country = "US" }\n'
        f'shipstation = {{ url = "{sandbox_url}", api_key = "k", api_secret = "s" }}\n'
    )
    client: TestClient = await aiohttp_client(
        create_app(acme_settings(tmp_path, sandbox_url, other))
    )
    response = await client.post("/v1/labels", json=EXPLICIT, headers=ACME_AUTH)
    return client, (await response.json())["label_id"]


async def test_unknown_and_other_accounts_labels_are_404(
    aiohttp_client: Any, sandbox_url: str, tmp_path: Path
) -> None:
    client, label_id = await acme_label(aiohttp_client, tmp_path, sandbox_url)
    own = await client.get(f"/v1/labels/{label_id}/label.pdf", headers=ACME_AUTH)

    theirs = await problem_of(client, f"/v1/labels/{label_id}/label.pdf", 404, **OTHER)
    unknown = await problem_of(client, "/v1/labels/lb_nothing/label.pdf", 404, **ACME_AUTH)

    assert own.status == 200
    assert theirs == {**theirs, "code": "not_found", "detail": f"no label {label_id}"}
    assert unknown["code"] == "not_found"
