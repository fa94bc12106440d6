"""Reading Cin7 Core webhook payloads: lenient about keys, strict about what is missing."""

from __future__ import annotations

import json

import pytest

from ratesvc.automation.events import PACK_AUTHORISED, Cin7Event, parse_event
from ratesvc.errors import MalformedJson
from tests.conftest import load_json

SAMPLES = load_json("cin7/webhooks.json")


def test_pack_authorised_names_sale_task_and_order() -> None:
    event = parse_event(json.dumps(SAMPLES[PACK_AUTHORISED]).encode())

    assert event == Cin7Event(
        event_type="Sale/PackAuthorised", sale_id="91EE7B1D-BD35-4E43-B98A-DB86BE777624",
        task_id="A1C2E3F4-0000-4E43-B98A-DB86BE777624", order_number="SO-00044",
    )  # fmt: skip


def test_shipment_authorised_spells_task_and_order_differently() -> None:
    event = parse_event(json.dumps(SAMPLES["Sale/ShipmentAuthorised"]).encode())

    assert event.sale_id is None
    assert event.task_id == "A1C2E3F4-0000-4E43-B98A-DB86BE777624"
    assert event.order_number == "SO-00044"


def test_keys_are_matched_whatever_their_case() -> None:
    event = parse_event(b'{"eventtype": "Sale/Voided", "saleid": " s-1 ", "ORDERNUMBER": "SO-9"}')

    assert (event.event_type, event.sale_id, event.order_number) == ("Sale/Voided", "s-1", "SO-9")


def test_the_same_event_has_the_same_key_however_ids_are_cased() -> None:
    first = parse_event(b'{"EventType": "Sale/PackAuthorised", "SaleID": "AB", "TaskID": "CD"}')
    again = parse_event(b'{"EventType": "Sale/PackAuthorised", "SaleID": "ab", "TaskID": "cd"}')
    other = parse_event(b'{"EventType": "Sale/Voided", "SaleID": "ab"}')

    assert first.dedup_key == again.dedup_key
    assert other.dedup_key != first.dedup_key


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"SaleID": "s-1"}', "no EventType"),
        (b'{"EventType": "PackAuthorised!", "SaleID": "s-1"}', "not a Cin7 Core event type"),
        (b'{"EventType": "Sale/PackAuthorised", "CustomerName": "x"}', "SaleID or TaskID"),
        (b'{"EventType": "Sale/PackAuthorised", "SaleID": 7}', "must be a string"),
        (b'{"EventType": "Sale/PackAuthorised", "SaleID": "' + b"x" * 101 + b'"}', "longer"),
    ],
)
def test_what_cannot_be_a_cin7_event_is_refused_with_a_reason(body: bytes, says: str) -> None:
    with pytest.raises(MalformedJson) as refused:
        parse_event(body)

    assert says in refused.value.detail
    assert refused.value.status == 400
