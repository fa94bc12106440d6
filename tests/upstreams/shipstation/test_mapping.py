"""The pure ShipStation mapping, checked against the sample payloads in tests/data/shipstation."""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratesvc.errors import UpstreamAuth, UpstreamError, UpstreamThrottled, UpstreamUnavailable
from ratesvc.models import (
    Address,
    CustomsDeclaration,
    CustomsItem,
    Dimensions,
    LabelRequest,
    RateRequest,
    ShipmentQuery,
    Weight,
)
from ratesvc.units import money_str
from ratesvc.upstreams.shipstation import mapping, wire
from tests.conftest import DATA, load_json


def decode(name: str, kind: Any) -> Any:
    """Decode the sample file's own bytes, so numbers keep the scale they were written with."""
    return msgspec.json.decode((DATA / "shipstation" / name).read_bytes(), type=kind)


def wire_json(value: msgspec.Struct) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(wire.encoder.encode(value))
    return parsed


def test_carriers_keep_codes_names_and_exact_balances() -> None:
    carriers = mapping.carriers_from_wire(decode("carriers_response.json", list[wire.Carrier]))

    assert [c.carrier_code for c in carriers] == ["stamps_com", "ups", "fedex"]
    assert carriers[0].name == "Stamps.com"
    assert carriers[0].requires_funded_account is True
    assert carriers[1].account_number == "A1B2C3"
    assert carriers[2].nickname == "FEDEX"
    assert carriers[1].balance == Decimal("0.0")
    assert str(carriers[1].balance) == "0.0"  # scale kept as sent


def test_services_say_where_they_ship() -> None:
    services = mapping.services_from_wire(
        decode("listservices_stamps_com_response.json", list[wire.ServiceOrPackage])
    )

    assert len(services) == 8
    first_class = services[0]
    assert (first_class.service_code, first_class.name) == (
        "usps_first_class_mail",
        "USPS First Class Mail",
    )
    assert first_class.domestic and not first_class.international
    intl = [s.service_code for s in services if s.international]
    assert intl == [
        "usps_first_class_mail_international",
        "usps_priority_mail_international",
        "usps_priority_mail_express_international",
    ]


def test_rates_keep_every_row_with_exact_money() -> None:
    rows = mapping.rates_from_wire(decode("getrates_fedex_response.json", list[wire.Rate]))

    assert len(rows) == 7
    ground = next(r for r in rows if r.service_code == "fedex_ground")
    assert ground.service_name == "FedEx Ground®"
    assert ground.shipment_cost == Decimal("8.25")
    assert ground.other_cost == Decimal("0.33")
    first = rows[0]
    assert first.shipment_cost == Decimal("87.8")
    assert money_str(first.shipment_cost + first.other_cost) == "90.43"


def test_four_and_zero_decimal_money_is_parsed_exactly() -> None:
    body = b'[{"serviceName":"A","serviceCode":"a","shipmentCost":4.0100,"otherCost":0},'
    body += b'{"serviceName":"B","serviceCode":"b","shipmentCost":12,"otherCost":0.0050}]'
    rows = mapping.rates_from_wire(msgspec.json.decode(body, type=list[wire.Rate]))

    assert rows[0].shipment_cost == Decimal("4.01")
    assert str(rows[0].shipment_cost) == "4.0100"
    assert rows[0].other_cost == Decimal(0)
    assert rows[1].shipment_cost == Decimal(12)
    assert rows[1].other_cost == Decimal("0.005")
    assert money_str(rows[1].shipment_cost + rows[1].other_cost) == "12.01"  # half-up


@given(st.decimals(min_value=Decimal(0), max_value=Decimal(100000), places=4, allow_nan=False))
def test_any_money_with_up_to_four_places_survives_the_wire(amount: Decimal) -> None:
    body = b'[{"serviceCode":"x","shipmentCost":' + str(amount).encode() + b"}]"
    (row,) = msgspec.json.decode(body, type=list[wire.Rate])

    assert row.shipmentCost == amount
    assert row.shipmentCost.as_tuple().exponent == amount.as_tuple().exponent


ADDRESS_FROM = Address(postal_code="78703", country="US", city="Austin", state="TX")
ADDRESS_TO = Address(
    name="The President", company="US Govt", street1="1600 Pennsylvania Ave",
    street2="Oval Office", city="Washington", state="DC", postal_code="20500", country="US",
    residential=False,
)  # fmt: skip


def test_rate_request_matches_the_documented_wire_shape() -> None:
    request = RateRequest(
        carrier_code="fedex",
        ship_from=ADDRESS_FROM,
        ship_to=ADDRESS_TO,
        weight=Weight(value=3, unit="oz"),
        dimensions=Dimensions(length=7, width=5, height=6, unit="in"),
        confirmation="delivery",
    )
    sent = wire_json(mapping.rate_request_to_wire(request))
    sample = load_json("shipstation/getrates_fedex_request.json")

    for key, value in sample.items():
        assert sent[key] == value, key
    assert sent["fromCity"] == "Austin"
    assert sent["fromState"] == "TX"


def test_postal_codes_stay_strings_with_leading_zeros() -> None:
    request = RateRequest(
        carrier_code="ups",
        ship_from=Address(postal_code="02110", country="US"),
        ship_to=Address(postal_code="01001", country="us", state="MA"),
        weight=Weight(value=1, unit="lb"),
    )
    raw = wire.encoder.encode(mapping.rate_request_to_wire(request))

    assert b'"fromPostalCode":"02110"' in raw
    assert b'"toPostalCode":"01001"' in raw
    assert b'"toCountry":"US"' in raw


@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        (Weight(value=3.5, unit="oz"), {"value": 3.5, "units": "ounces"}),
        (Weight(value=2, unit="lb"), {"value": 2, "units": "pounds"}),
        (Weight(value=450, unit="g"), {"value": 450, "units": "grams"}),
        (Weight(value=1.234, unit="kg"), {"value": 1234, "units": "grams"}),
    ],
)
def test_weights_are_sent_in_units_shipstation_knows(
    weight: Weight, expected: dict[str, Any]
) -> None:
    sent = wire_json(mapping.weight_to_wire(weight))

    assert sent["units"] == expected["units"]
    assert Decimal(str(sent["value"])) == Decimal(str(expected["value"]))


@pytest.mark.parametrize(
    ("dimensions", "units", "sides"),
    [
        (Dimensions(length=7, width=5, height=6, unit="in"), "inches", ("7", "5", "6")),
        (Dimensions(length=20, width=10, height=8, unit="cm"), "centimeters", ("20", "10", "8")),
        (Dimensions(length=205, width=99, height=5, unit="mm"), "centimeters",
         ("20.5", "9.9", "0.5")),
        (Dimensions(length=0.4, width=0.25, height=0.125, unit="m"), "centimeters",
         ("40", "25", "12.5")),
    ],
)  # fmt: skip
def test_dimensions_are_converted_without_losing_precision(
    dimensions: Dimensions, units: str, sides: tuple[str, str, str]
) -> None:
    sent = mapping.dimensions_to_wire(dimensions)

    assert sent.units == units
    assert (sent.length, sent.width, sent.height) == tuple(Decimal(s) for s in sides)


def test_label_request_matches_the_documented_wire_shape_and_carries_the_purchase_key() -> None:
    request = LabelRequest(
        carrier_code="fedex", service_code="fedex_ground", package_code="package",
        ship_date=dt.date(2021, 4, 3),
        ship_from=Address(
            name="Jason Hodges", company="ShipStation", street1="2815 Exposition Blvd",
            street2="Ste 2353242", city="Austin", state="TX", postal_code="78703", country="US",
            residential=False,
        ),
        ship_to=ADDRESS_TO, weight=Weight(value=3, unit="oz"),
        dimensions=Dimensions(length=7, width=5, height=6, unit="in"), confirmation="delivery",
        purchase_key="acct:sale:task",
    )  # fmt: skip
    sent = wire_json(mapping.label_request_to_wire(request))
    sample = load_json("shipstation/createlabel_request.json")

    for key, value in sample.items():
        if key != "advancedOptions":
            assert sent[key] == value, key
    assert sent["advancedOptions"]["customField1"] == "acct:sale:task"


def test_created_label_is_read_with_pdf_bytes_and_utc_time() -> None:
    record = mapping.shipment_from_wire(decode("createlabel_response.json", wire.Shipment))

    assert record.shipment_id == 72513480
    assert record.tracking_number == "782390443992"
    assert record.shipment_cost == Decimal("9.06")
    assert record.insurance_cost == Decimal(0)
    assert record.label_pdf is not None
    assert record.label_pdf.startswith(b"%PDF-1.4")
    assert record.ship_date == dt.date(2016, 4, 3)
    # 12:11:36.863 Pacific daylight time is 19:11:36.863 UTC
    assert record.created_at == dt.datetime(2016, 4, 3, 19, 11, 36, 863000, tzinfo=dt.UTC)


def test_shipment_list_items_are_read_for_reconciliation() -> None:
    page = mapping.shipment_page_from_wire(decode("shipments_list_item.json", wire.ShipmentList))

    assert (page.total, page.page, page.pages) == (1, 1, 1)
    (item,) = page.shipments
    assert item.tracking_number == "9405511699000554135855"
    assert item.ship_to_postal_code == "57014-2130"
    assert item.label_pdf is None
    assert item.voided is False
    assert item.weight == Weight(value=2.0, unit="oz")
    assert str(item.insurance_cost) == "0.00"


def test_shipment_query_is_sent_in_pacific_time() -> None:
    query = ShipmentQuery(
        carrier_code="fedex",
        created_from=dt.datetime(2026, 11, 29, 16, 0, tzinfo=dt.UTC),
        created_to=dt.datetime(2026, 11, 29, 17, 30, tzinfo=dt.UTC),
    )
    params = mapping.shipment_query_to_params(query)

    assert params["carrierCode"] == "fedex"
    assert params["createDateStart"] == "2026-11-29 08:00:00"  # PST is UTC-8 in November
    assert params["createDateEnd"] == "2026-11-29 09:30:00"


def test_void_answer_is_read() -> None:
    sample = load_json("shipstation/voidlabel.json")
    answer = msgspec.convert(sample["response"], wire.VoidResponse)

    result = mapping.void_from_wire(answer)

    assert result.approved is True
    assert result.message == "Label voided successfully"


@pytest.mark.parametrize(
    ("status", "sample", "kind", "code", "leg_code", "words"),
    [
        (400, "400_model_state", UpstreamError, "upstream_error", "upstream_error",
         "testlabel: The value '0' is not valid for Boolean."),
        (500, "500_exception", UpstreamError, "upstream_error", "upstream_error",
         "Invalid carrierCode"),
        (429, "429_rate_limited", UpstreamThrottled, "upstream_unavailable",
         "upstream_throttled", "rate limit"),
        (401, None, UpstreamAuth, "upstream_auth", "upstream_auth", "regenerated"),
        (503, None, UpstreamUnavailable, "upstream_unavailable", "upstream_error", "503"),
    ],
)  # fmt: skip
def test_each_upstream_error_class_maps_to_its_problem_code(
    status: int, sample: str | None, kind: type, code: str, leg_code: str, words: str
) -> None:
    body = orjson.dumps(load_json("shipstation/errors.json")[sample]) if sample else b""

    error = mapping.error_from_response(status, body, "getrates")

    assert type(error) is kind
    assert error.code == code
    assert error.leg_code == leg_code
    assert words in error.detail
    assert error.upstream_status == status
    assert error.endpoint == "getrates"


def test_an_error_body_that_is_not_json_still_maps() -> None:
    error = mapping.error_from_response(500, b"<html>Service Unavailable</html>", "carriers")

    assert isinstance(error, UpstreamUnavailable)
    assert error.retryable


def _label_to(ship_to: Address, customs: CustomsDeclaration | None) -> LabelRequest:
    return LabelRequest(
        carrier_code="ups", service_code="ups_standard_international", package_code="package",
        ship_date=dt.date(2026, 12, 1), ship_from=ADDRESS_TO, ship_to=ship_to,
        weight=Weight(value=2, unit="lb"), customs=customs,
    )  # fmt: skip


def test_customs_go_out_as_international_options_with_values_as_numbers() -> None:
    items = [
        CustomsItem(description="Oolong tea, 100 g tin", quantity=4, value="50.00",
                    hs_code="0902.10", country_of_origin="CN", sku="TEA-1"),
        CustomsItem(description="Tea strainer", quantity=1, value="0.5",
                    country_of_origin="DE"),
    ]  # fmt: skip
    customs = CustomsDeclaration(contents="gift", non_delivery="treat_as_abandoned", items=items)
    to = Address(country="CA", postal_code="M5E 1W7", state="ON", city="Toronto")

    encoded = wire.encoder.encode(mapping.label_request_to_wire(_label_to(to, customs)))

    assert orjson.loads(encoded)["internationalOptions"] == {
        "contents": "gift",
        "nonDelivery": "treat_as_abandoned",
        "customsItems": [
            {"description": "Oolong tea, 100 g tin", "quantity": 4, "value": 50.0,
             "harmonizedTariffCode": "0902.10", "countryOfOrigin": "CN"},
            {"description": "Tea strainer", "quantity": 1, "value": 0.5,
             "harmonizedTariffCode": None, "countryOfOrigin": "DE"},
        ],
    }  # fmt: skip
    assert b'"value":50.00,' in encoded  # the money string's digits, as a JSON number


def test_a_label_without_customs_sends_null_international_options() -> None:
    sent = wire_json(mapping.label_request_to_wire(_label_to(ADDRESS_TO, None)))

    assert "internationalOptions" in sent
    assert sent["internationalOptions"] is None


def test_a_customs_form_in_form_data_is_read_as_pdf_bytes() -> None:
    form = b"%PDF-1.4 customs"
    item = wire.Shipment(shipmentId=1, formData=base64.b64encode(form).decode())
    assert mapping.shipment_from_wire(item).customs_form_pdf == form
    assert mapping.shipment_from_wire(wire.Shipment(shipmentId=1)).customs_form_pdf is None
    broken = wire.Shipment(shipmentId=1, formData="not base64!")
    assert mapping.shipment_from_wire(broken).customs_form_pdf is None
