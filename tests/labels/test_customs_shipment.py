"""International shipments through HTTP: customs declared per package, refused before buying
when missing (``customs_required``), forwarded to ShipStation unchanged, and the customs form
kept, served and forgotten with the label."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import pypdf
import pytest
from aiohttp.test_utils import TestClient

from ratesvc import keys
from ratesvc.errors import CustomsRequired
from ratesvc.labels.customs import is_international, require_items
from ratesvc.models import Address, PackageIn, Weight
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.pdf import label_pdf
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.api.test_labels import buy, label_of, labels, until  # noqa: F401 (the fixture)
from tests.conftest import AUTH
from tests.labels.conftest import Service
from tests.labels.test_retention import age
from tests.ledger_sql import ledger_sql

TO_CANADA = {"name": "A. Client", "street1": "1 Yonge St", "city": "Toronto", "state": "ON",
             "postal_code": "M5E 1W7", "country": "CA"}  # fmt: skip
TO_APO = {"name": "Sgt. A. Soldier", "street1": "Unit 2050 Box 4190", "city": "APO",
          "state": "AE", "postal_code": "09096", "country": "US"}  # fmt: skip
TO_US = {"name": "A. Customer", "street1": "350 5th Ave", "city": "New York", "state": "NY",
         "postal_code": "10118", "country": "US"}  # fmt: skip
TEA = {"description": "Oolong tea, 100 g tin", "quantity": 4, "value": "50.00",
       "hs_code": "0902.10", "country_of_origin": "CN", "sku": "TEA-1"}  # fmt: skip
STRAINER = {"description": "Tea strainer", "quantity": 1, "value": "7.5",
            "country_of_origin": "DE"}  # fmt: skip
SENT_TEA = {"description": "Oolong tea, 100 g tin", "quantity": 4, "value": 50.0,
            "harmonizedTariffCode": "0902.10", "countryOfOrigin": "CN"}  # fmt: skip
SENT_STRAINER = {"description": "Tea strainer", "quantity": 1, "value": 7.5,
                 "harmonizedTariffCode": None, "countryOfOrigin": "DE"}  # fmt: skip


def box(name: str, *items: dict[str, Any]) -> dict[str, Any]:
    parcel: dict[str, Any] = {"weight": {"value": 2, "unit": "lb"}, "box": name}
    if items:
        parcel["customs_items"] = list(items)
    return parcel


def shipment_label(
    ship_to: dict[str, Any], *packages: dict[str, Any], **shipment: Any
) -> dict[str, Any]:
    service = "ups_ground" if ship_to["country"] == "US" else "ups_standard_international"
    return {"carrier_code": "ups", "service_code": service, "test_label": True,
            "shipment": {"ship_to": ship_to, "packages": list(packages), **shipment}}  # fmt: skip


def createlabel_bodies(sandbox: ShipStationSandbox) -> list[dict[str, Any]]:
    return [body for path, body in sandbox.received if path == "/shipments/createlabel"]


async def listed(client: TestClient) -> list[dict[str, Any]]:
    body: dict[str, Any] = await (await client.get("/v1/labels", headers=AUTH)).json()
    return list(body["labels"])


@pytest.mark.parametrize("ship_to", [TO_CANADA, TO_APO], ids=["canada", "apo"])
async def test_an_international_shipment_without_customs_items_is_refused_before_anything(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
    ship_to: dict[str, Any],
) -> None:
    body = shipment_label(ship_to, box("Box 1", TEA), box("Box 2"))

    problem = await buy(labels, body, status=422)

    assert problem["code"] == "customs_required"
    assert [e["field"] for e in problem["errors"]] == ["shipment.packages[1].customs_items"]
    assert "Box 2" in problem["detail"]
    assert createlabel_bodies(sandbox) == []
    assert await listed(labels) == []  # nothing recorded


async def test_customs_items_are_forwarded_unchanged_and_the_form_is_served(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
) -> None:
    body = shipment_label(TO_CANADA, box("Box 1", TEA, STRAINER), box("Box 2", STRAINER),
                          customs={"contents": "gift"})  # fmt: skip

    label = await buy(labels, body)

    first, second = createlabel_bodies(sandbox)
    assert first["internationalOptions"] == {
        "contents": "gift", "nonDelivery": "return_to_sender",
        "customsItems": [SENT_TEA, SENT_STRAINER],
    }  # fmt: skip
    assert second["internationalOptions"]["customsItems"] == [SENT_STRAINER]  # its own box only
    assert label["status"] == "completed"
    for n, package in enumerate(label["packages"], start=1):
        url = f"/v1/labels/{label['label_id']}/packages/{n}/customs.pdf"
        assert package["customs_form_url"] == url
        response = await labels.get(url, headers=AUTH)
        assert response.status == 200
        assert response.content_type == "application/pdf"
        form = pypdf.PdfReader(io.BytesIO(await response.read()), strict=True)
        assert len(form.pages) == 1
        text = form.pages[0].extract_text()
        assert package["tracking_number"] in text
        assert "1 x Tea strainer - USD 7.5 - HS - - DE" in text
    viewed = await (await labels.get(f"/v1/labels/{label['label_id']}", headers=AUTH)).json()
    assert viewed["packages"][0]["customs_form_url"] == label["packages"][0]["customs_form_url"]


async def test_an_apo_address_is_international_although_its_country_is_us(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
) -> None:
    label = await buy(labels, shipment_label(TO_APO, box("Box 1", TEA)))

    (sent,) = createlabel_bodies(sandbox)
    assert sent["internationalOptions"]["customsItems"] == [SENT_TEA]
    assert sent["internationalOptions"]["contents"] == "merchandise"  # the defaults
    assert label["packages"][0]["customs_form_url"] is not None


async def test_a_domestic_shipment_sends_no_customs_and_has_no_form(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
) -> None:
    label = await buy(labels, shipment_label(TO_US, box("Box 1", TEA), box("Box 2")))

    assert [b["internationalOptions"] for b in createlabel_bodies(sandbox)] == [None, None]
    assert "internationalOptions" in createlabel_bodies(sandbox)[0]  # sent as null
    assert [p["customs_form_url"] for p in label["packages"]] == [None, None]
    missing = await labels.get(
        f"/v1/labels/{label['label_id']}/packages/1/customs.pdf", headers=AUTH
    )
    assert missing.status == 404
    assert (await missing.json())["code"] == "not_found"
    bad_n = await labels.get(f"/v1/labels/{label['label_id']}/packages/x/customs.pdf", headers=AUTH)
    assert bad_n.status == 422


async def rate(client: TestClient, shipment: dict[str, Any]) -> dict[str, Any]:
    body = {"shipment": shipment, "carriers": ["ups"]}
    response = await client.post("/v1/rates", json=body, headers=AUTH)
    payload: dict[str, Any] = await response.json()
    assert response.status == 200, payload
    return payload


async def test_a_quote_keeps_its_customs_and_buying_it_forwards_the_same_items(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
) -> None:
    customs = {"contents": "sample", "non_delivery": "treat_as_abandoned"}
    shipment = {"ship_to": TO_CANADA, "packages": [box("Box 1", TEA)], "customs": customs}
    quotes = (await rate(labels, shipment))["quotes"]
    quote = next(q for q in quotes if q["service_code"] == "ups_standard_international")
    stored = await (await labels.get(f"/v1/quotes/{quote['quote_id']}", headers=AUTH)).json()

    label = await buy(labels, {"quote_id": quote["quote_id"]})

    assert stored["shipment"]["packages"][0]["customs_items"][0]["hs_code"] == "0902.10"
    (sent,) = createlabel_bodies(sandbox)
    assert sent["internationalOptions"] == {
        "contents": "sample", "nonDelivery": "treat_as_abandoned", "customsItems": [SENT_TEA],
    }  # fmt: skip
    assert label["packages"][0]["customs_form_url"] is not None


async def test_an_international_quote_without_customs_is_rated_but_not_bought(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
) -> None:
    quotes = (await rate(labels, {"ship_to": TO_CANADA, "packages": [box("Box 1")]}))["quotes"]
    assert quotes  # rating needs nothing more

    problem = await buy(labels, {"quote_id": quotes[0]["quote_id"]}, status=422)

    assert problem["code"] == "customs_required"
    assert createlabel_bodies(sandbox) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"quantity": 0}, "quantity"),
        ({"quantity": 1.5}, "quantity"),
        ({"value": "-1.00"}, "value"),
        ({"value": 50}, "value"),
        ({"value": "1.005"}, "value"),
        ({"hs_code": "12"}, "hs_code"),
        ({"hs_code": "0902..10"}, "hs_code"),
        ({"country_of_origin": "China"}, "country_of_origin"),
        ({"country_of_origin": "XX"}, "country_of_origin"),
        ({"description": "ab"}, "description"),
        ({"description": "  ab  "}, "description"),
        ({"description": "x" * 101}, "description"),
        ({"origin": "CN"}, "origin"),
    ],
)
async def test_bad_customs_items_are_422_with_their_field_paths(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
    change: dict[str, Any],
    field: str,
) -> None:
    body = shipment_label(TO_CANADA, box("Box 1", {**TEA, **change}))

    problem = await buy(labels, body, status=422)

    assert problem["code"] == "invalid_request"
    assert [e["field"] for e in problem["errors"]] == [
        f"shipment.packages[0].customs_items[0].{field}"
    ]
    assert createlabel_bodies(sandbox) == []


@pytest.mark.parametrize(
    ("customs", "field"),
    [({"contents": "stuff"}, "contents"), ({"non_delivery": "burn"}, "non_delivery"),
     ({"insured": True}, "insured")],
)  # fmt: skip
async def test_a_bad_customs_header_is_422_with_its_field_path(
    labels: TestClient,  # noqa: F811
    customs: dict[str, Any],
    field: str,
) -> None:
    body = shipment_label(TO_CANADA, box("Box 1", TEA), customs=customs)

    problem = await buy(labels, body, status=422)

    assert [e["field"] for e in problem["errors"]] == [f"shipment.customs.{field}"]


async def test_retention_forgets_customs_forms_with_the_label_pdfs(
    restartable: Service, sandbox: ShipStationSandbox, tmp_path: Path
) -> None:
    client = restartable.client
    assert client is not None
    label = await buy(client, shipment_label(TO_CANADA, box("Box 1", TEA)))
    kept = "SELECT n, kind FROM documents ORDER BY kind"
    assert await restartable.sql(kept) == [(1, "customs"), (1, "label")]  # in the ledger
    assert await asyncio.to_thread(lambda: list(tmp_path.rglob("*.pdf"))) == []  # no files
    await age(restartable, 91)

    _, _, removed = await client.app[keys.LABELS].retention.purge()

    url = f"/v1/labels/{label['label_id']}"
    assert removed == 2  # the label PDF and the customs form
    assert await restartable.sql(kept) == []
    assert (await client.get(url + "/packages/1/customs.pdf", headers=AUTH)).status == 404
    viewed = await (await client.get(url, headers=AUTH)).json()
    assert viewed["packages"][0]["customs_form_url"] is None


async def sale_label_with_a_form(
    client: TestClient, cin7_sandbox: Cin7Sandbox, folder: Path
) -> tuple[dict[str, Any], bytes]:
    """A sale's label whose write-back waits for Cin7 Core, its package recorded with a customs
    form kept as a file, as versions before ledger migration 6 kept them (a sale's declaration
    is built from the sale elsewhere); Cin7 Core is back when this returns."""
    cin7_sandbox.knobs.writes_down = True
    sale = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
    label = await buy(client, sale)
    await until(lambda: status_is(client, label["label_id"], "write_back_failed"))
    form = label_pdf(["CUSTOMS DECLARATION"])
    (folder / "form.pdf").write_bytes(form)
    await ledger_sql(
        client.app[keys.SETTINGS].ledger_url,
        "UPDATE packages SET customs_pdf_path = ?",
        (str(folder / "form.pdf"),),
    )
    return label, form


async def status_is(client: TestClient, label_id: str, status: str) -> bool:
    return (await label_of(client, label_id))["status"] == status


async def test_the_write_back_attaches_the_customs_form_next_to_the_label(
    labels: TestClient,  # noqa: F811
    cin7_sandbox: Cin7Sandbox,
    tmp_path: Path,
) -> None:
    label, form = await sale_label_with_a_form(labels, cin7_sandbox, tmp_path)
    cin7_sandbox.knobs.writes_down = False

    await until(lambda: status_is(labels, label["label_id"], "completed"))

    tracking = label["packages"][0]["tracking_number"]
    attached = {a["FileName"]: a["Content"] for a in cin7_sandbox.attachments["sale-simple"]}
    assert sorted(attached) == [f"customs-{tracking}.pdf", f"label-{tracking}.pdf"]
    assert base64.b64decode(attached[f"customs-{tracking}.pdf"]) == form
    viewed = await label_of(labels, label["label_id"])
    assert viewed["packages"][0]["customs_form_url"].endswith("/packages/1/customs.pdf")
    served = await labels.get(viewed["packages"][0]["customs_form_url"], headers=AUTH)
    assert await served.read() == form


async def test_a_customs_form_already_on_the_sale_is_not_attached_again(
    labels: TestClient,  # noqa: F811
    cin7_sandbox: Cin7Sandbox,
    tmp_path: Path,
) -> None:
    """An earlier attempt attached the form, then failed: the retry looks before it writes."""
    label, _ = await sale_label_with_a_form(labels, cin7_sandbox, tmp_path)
    tracking = label["packages"][0]["tracking_number"]
    earlier = {"ID": "earlier", "FileName": f"customs-{tracking}.pdf", "Content": ""}
    cin7_sandbox.attachments["sale-simple"] = [earlier]
    cin7_sandbox.knobs.writes_down = False

    await until(lambda: status_is(labels, label["label_id"], "completed"))

    names = [a["FileName"] for a in cin7_sandbox.attachments["sale-simple"]]
    assert names == [f"customs-{tracking}.pdf", f"label-{tracking}.pdf"]


@pytest.mark.parametrize(
    ("ship_from", "ship_to", "international"),
    [(("US", "TX"), ("US", "NY"), False), (("US", "TX"), ("CA", "ON"), True),
     (("US", "TX"), ("US", "AE"), True), (("US", "TX"), ("US", "ap"), True),
     (("US", "TX"), ("US", "AA"), True), (("CA", "ON"), ("CA", "AE"), False),
     (("DE", None), ("US", "NY"), True)],
)  # fmt: skip
def test_international_means_other_countries_or_a_us_military_address(
    ship_from: tuple[str, str | None], ship_to: tuple[str, str | None], international: bool
) -> None:
    def address(where: tuple[str, str | None]) -> Address:
        return Address(country=where[0], state=where[1], postal_code="1")

    assert is_international(address(ship_from), address(ship_to)) is international


def test_a_sale_plan_without_a_declaration_is_refused_naming_its_boxes() -> None:
    """The net under every plan, whoever built it: a sale's declaration comes from the sale."""
    boxes = [PackageIn(weight=Weight(value=1, unit="lb"), box="Carton A"),
             PackageIn(weight=Weight(value=1, unit="lb"))]  # fmt: skip

    with pytest.raises(CustomsRequired) as refused:
        require_items(Address(country="US", postal_code="78703"),
                      Address(country="CA", postal_code="M5E 1W7"), boxes, at=None)  # fmt: skip

    assert [(e.field, e.message) for e in refused.value.errors] == [
        ("sale_id", "Carton A declares no customs items"),
        ("sale_id", "package 2 declares no customs items"),
    ]
    assert "(US to CA)" in refused.value.detail
