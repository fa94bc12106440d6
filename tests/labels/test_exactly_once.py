"""Issue 9's label defects, each through HTTP against both sandboxes: one live label per
fulfilment, replays from the ledger alone, void against the write-back, unknown outcomes that stay
unknown, heavy boxes, changed sales, the account's time zone and retention."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ratesvc.app import create_app
from ratesvc.config import ConfigError, load_settings
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.knobs import Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.api.test_labels import EXPLICIT, buy, createlabel_calls, label_of, until
from tests.conftest import AUTH, service_env
from tests.labels.conftest import FAST, SALE, Service, status_is


def live_shipments(sandbox: ShipStationSandbox) -> list[dict[str, Any]]:
    return [s for s in sandbox.shipments.values() if not s["voided"]]


def sale_tracking(cin7: Cin7Sandbox, sale_id: str = "sale-simple") -> set[str]:
    lines = cin7.fulfilment(sale_id)["Ship"]["Lines"]
    return {line["TrackingNumber"] for line in lines if line.get("TrackingNumber")}


# --- 1. one live label per fulfilment, whatever the keys ---------------------------------------


async def test_a_second_key_for_a_labelled_fulfilment_is_already_labelled(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Cin7 Core writes failing, so the sale does not show the tracking yet: keys ``a``, ``b``
    and none used to buy three labels for one fulfilment."""
    client = restartable.client
    assert client is not None
    cin7_sandbox.knobs.writes_down = True
    first = await buy(client, SALE, key="a")

    with_b = await buy(client, SALE, status=409, key="b")
    without = await buy(client, SALE, status=409)
    by_quote = await client.post("/v1/rates", json={"sale_id": "sale-simple"}, headers=AUTH)
    quote = (await by_quote.json())["quotes"][0]["quote_id"]
    quoted = await buy(client, {"quote_id": quote}, status=409, key="c")

    for refusal in (with_b, without, quoted):
        assert refusal["code"] == "already_labelled"
        assert refusal["label_id"] == first["label_id"]
    assert createlabel_calls(sandbox) == 1
    assert len(live_shipments(sandbox)) == 1


async def test_the_same_body_without_a_key_is_a_replay_of_the_fulfilments_label(
    restartable: Service, sandbox: ShipStationSandbox
) -> None:
    client = restartable.client
    assert client is not None
    first = await buy(client, SALE)

    again = await buy(client, SALE, status=200)

    assert again["label_id"] == first["label_id"]
    assert createlabel_calls(sandbox) == 1


# --- 2. replays from the ledger alone ---------------------------------------------------------


async def test_a_replay_after_shipping_restart_and_outages_is_answered_from_the_ledger(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """After the write-back the sale has shipped; the replay used to read the sale first and
    answer ``already_shipped``. It must also work after a restart (the quote store is empty),
    and while both upstreams are down."""
    client = restartable.client
    assert client is not None
    rated = await client.post("/v1/rates", json={"sale_id": "sale-simple"}, headers=AUTH)
    body = {"quote_id": (await rated.json())["quotes"][0]["quote_id"]}
    first = await buy(client, body, key="k")
    await until(lambda: status_is(client, first["label_id"], "completed"))
    client = await restartable.restart()
    cin7_sandbox.knobs.down = True
    sandbox.knobs.error_rate = {"*": 1.0}
    calls = dict(sandbox.calls), cin7_sandbox.counters()

    replay = await buy(client, body, status=200, key="k")

    assert replay["label_id"] == first["label_id"]
    assert replay["status"] == "completed"
    assert (dict(sandbox.calls), cin7_sandbox.counters()) == calls  # nothing upstream


# --- 3 and 4. void against the write-back -------------------------------------------------------


async def test_a_void_while_the_write_back_is_failing_leaves_no_tracking_on_the_sale(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    client = restartable.client
    assert client is not None
    cin7_sandbox.knobs.writes_down = True
    label = await buy(client, SALE)
    await until(lambda: status_is(client, label["label_id"], "write_back_failed"))

    voided = await (await client.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)).json()
    cin7_sandbox.knobs.writes_down = False
    await until(lambda: restartable.drained(label["label_id"]))
    final = await label_of(client, label["label_id"])

    assert voided["status"] == "voided"
    assert final["status"] == "voided"
    assert sale_tracking(cin7_sandbox) == set()


async def test_a_void_during_an_in_flight_write_back_is_followed_by_its_correction(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """The write-back is writing the Ship when the void lands: its tracking reaches the sale,
    then the correction clears it, and the label never flips back from ``voided``."""
    client = restartable.client
    assert client is not None
    cin7_sandbox.knobs.latency = Latency(base_ms=300)
    label = await buy(client, SALE)
    await asyncio.sleep(0.4)  # the write-back has read the sale and is posting the Ship

    response = await client.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)
    cin7_sandbox.knobs.latency = Latency()
    await until(lambda: restartable.drained(label["label_id"]))
    final = await label_of(client, label["label_id"])

    assert response.status == 200
    assert final["status"] == "voided"
    assert sale_tracking(cin7_sandbox) == set()
    assert [s["voided"] for s in sandbox.shipments.values()] == [True]


async def test_a_restart_with_cin7_down_still_writes_the_label_back_once(
    restartable: Service, cin7_sandbox: Cin7Sandbox
) -> None:
    """The status and its write-back job commit together: after a restart the job is there."""
    client = restartable.client
    assert client is not None
    cin7_sandbox.knobs.writes_down = True
    label = await buy(client, SALE)
    client = await restartable.restart()
    cin7_sandbox.knobs.writes_down = False

    await until(lambda: status_is(client, label["label_id"], "completed"))

    assert len(sale_tracking(cin7_sandbox)) == 1
    assert [kind for kind, _ in await restartable.outbox(label["label_id"])] == ["write_back"]


# --- 5. unknown outcomes stay unknown ---------------------------------------------------------


async def test_an_unknown_outcome_blocks_void_and_relabel_until_it_is_settled(
    restartable: Service, sandbox: ShipStationSandbox
) -> None:
    """ShipStation answers 5xx to createlabel and cannot list shipments: whether it sold the
    label is unknown, so nothing more is bought or voided for that fulfilment."""
    client = await restartable.restart(RATESVC_LABEL_SETTLE_S="3600")
    await client.get("/v1/carriers", headers=AUTH)
    sandbox.knobs.error_rate = {"*": 1.0}  # createlabel and the shipment list both fail
    pending = asyncio.create_task(buy(client, SALE, key="a"))
    await until(lambda: _any_label(client))
    label_id = (await _labels(client))[0]["label_id"]

    void = await client.post(f"/v1/labels/{label_id}/void", headers=AUTH)
    relabel = await buy(client, SALE, status=409, key="b")
    shown = await label_of(client, label_id)
    pending.cancel()

    assert void.status == 409 and (await void.json())["code"] == "reconciling"
    assert relabel["code"] == "reconciling" and relabel["label_id"] == label_id
    assert shown["packages"][0]["state"] == "unknown"
    assert createlabel_calls(sandbox) == 1  # never bought again while unknown


async def _labels(client: TestClient) -> list[dict[str, Any]]:
    labels: list[dict[str, Any]] = (await (await client.get("/v1/labels", headers=AUTH)).json())[
        "labels"
    ]
    return labels


async def _any_label(client: TestClient) -> bool:
    return bool(await _labels(client))


async def test_a_throttled_createlabel_does_not_use_up_attempts(
    restartable: Service, sandbox: ShipStationSandbox
) -> None:
    """Six 429s in a row (more than the five attempts a label gets) and then a label."""
    client = await restartable.restart(RATESVC_SHIPSTATION_WINDOW_S="0.2")
    sandbox.apply_window(window_s=0.2)
    await client.get("/v1/carriers", headers=AUTH)
    sandbox.storm(1.0)  # every call answers 429 for a while

    label = await buy(client, EXPLICIT)

    assert label["status"] == "completed"
    assert len(live_shipments(sandbox)) == 1


# --- 8. a heavy box ---------------------------------------------------------------------------


async def test_a_box_too_heavy_to_record_is_422_and_records_nothing(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    client = restartable.client
    assert client is not None
    cin7_sandbox.products["p-anvil"] = {"ID": "p-anvil", "Type": "Stock", "SKU": "Anvil",
                                        "Name": "Anvil", "Weight": 60, "WeightUnits": "kg",
                                        "Length": 50, "Width": 30, "Height": 30,
                                        "DimensionsUnits": "cm"}  # fmt: skip
    cin7_sandbox.add_sale("sale-heavy", "SO-1099", "Forge Ltd",
                          cin7_sandbox.sales["sale-simple"]["ShippingAddress"],
                          [("p-anvil", 2, "Crate 1")])  # fmt: skip
    body = {"sale_id": "sale-heavy", "carrier_code": "ups", "service_code": "ups_ground"}

    problem = await buy(client, body, status=422)
    listed = await _labels(client)
    client = await restartable.restart()

    assert problem["code"] == "invalid_request"
    assert "Crate 1" in problem["detail"] and "120000" in problem["detail"]
    assert listed == []
    assert await _labels(client) == []
    assert createlabel_calls(sandbox) == 0


# --- 12. a sale that changed since it was quoted; the account's day -----------------------------


async def test_buying_a_quote_whose_sale_changed_is_sale_changed(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    client = restartable.client
    assert client is not None
    rated = await client.post("/v1/rates", json={"sale_id": "sale-simple"}, headers=AUTH)
    quote = (await rated.json())["quotes"][0]["quote_id"]
    for line in cin7_sandbox.fulfilment("sale-simple")["Pack"]["Lines"]:
        line["Quantity"] += 1  # packed one more of each: heavier boxes

    problem = await buy(client, {"quote_id": quote}, status=409)

    assert problem["code"] == "sale_changed"
    assert "packed boxes" in problem["detail"]
    assert createlabel_calls(sandbox) == 0


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])  # UTC+14, UTC-11
async def test_the_default_ship_date_is_today_in_the_accounts_time_zone(
    restartable: Service, zone: str
) -> None:
    client = await restartable.restart(RATESVC_TIMEZONE=zone)

    label = await buy(client, EXPLICIT)

    assert label["ship_date"] == dt.datetime.now(zoneinfo.ZoneInfo(zone)).date().isoformat()


def test_an_unknown_time_zone_is_a_configuration_error(sandbox_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RATESVC_TIMEZONE: 'Mars/Olympus' is not an IANA"):
        load_settings(service_env(sandbox_url, tmp_path, RATESVC_TIMEZONE="Mars/Olympus"))


# --- 12. one hung Cin7 Core organisation does not stall the others' write-backs --------------


async def test_a_hung_cin7_organisation_does_not_stall_another_accounts_write_back(
    aiohttp_client: Any, aiohttp_server: Any, sandbox_url: str, tmp_path: Path
) -> None:
    """The slow organisation answers every call in 2 s, so its write-back takes several
    seconds; the quick one's, queued after it, is done long before."""
    slow, quick = Cin7Sandbox(), Cin7Sandbox()
    slow.knobs.latency = Latency(base_ms=2000)
    servers: list[TestServer] = [await aiohttp_server(s.app) for s in (slow, quick)]
    urls = [str(s.make_url("")).rstrip("/") for s in servers]
    config = tmp_path / "ratesvc.toml"
    config.write_text("".join(
        f'[accounts.{name}]\napi_tokens = ["{name}-token-0123456789"]\n'
        'ship_from = { postal_code = "78703", country = "US" }\n'
        f'shipstation = {{ url = "{sandbox_url}", api_key = "sandbox-key", '
        'api_secret = "sandbox-secret" }\n'
        f'cin7 = {{ url = "{url}", account_id = "sandbox-account", '
        'application_key = "sandbox-key" }\n'
        for name, url in zip(("slow", "quick"), urls, strict=True)
    ))  # fmt: skip
    env = {"RATESVC_CONFIG": str(config), "RATESVC_DATA_DIR": str(tmp_path / "d"), **FAST}
    client = await aiohttp_client(create_app(load_settings(env)))
    slow_label = await client.post("/v1/labels", json=SALE, headers=_bearer("slow"))
    assert slow_label.status == 201
    quick_label = await (await client.post("/v1/labels", json=SALE,
                                           headers=_bearer("quick"))).json()  # fmt: skip

    await until(lambda: _account_status(client, "quick", quick_label["label_id"]), 3.0)

    assert len(sale_tracking(quick)) == 1
    assert sale_tracking(slow) == set()  # still being written, seconds later


def _bearer(account: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {account}-token-0123456789"}


async def _account_status(client: TestClient, account: str, label_id: str) -> bool:
    response = await client.get(f"/v1/labels/{label_id}", headers=_bearer(account))
    return bool((await response.json())["status"] == "completed")


async def test_an_unreadable_recorded_purchase_goes_to_a_person_and_never_breaks_a_list(
    restartable: Service, sandbox: ShipStationSandbox, tmp_path: Path
) -> None:
    """A row an older version recorded with a plan it cannot read back (the 2 × 60 kg box)."""
    client = restartable.client
    assert client is not None
    label = await buy(client, EXPLICIT)
    ((plan,),) = await restartable.sql("SELECT plan FROM purchases")
    heavy = (
        bytes(plan)
        .replace(b'"value":3.0', b'"value":120000.0')
        .replace(b'"unit":"lb"', b'"unit":"g"')
    )
    await restartable.sql("UPDATE purchases SET plan = ?, status = 'purchasing'", (heavy,))
    await restartable.sql("UPDATE packages SET state = 'pending', shipment_id = NULL")

    client = await restartable.restart()
    await until(lambda: status_is(client, label["label_id"], "attention"))
    listed = await _labels(client)

    assert listed[0]["label_id"] == label["label_id"]
    assert "cannot be read" in listed[0]["detail"]
    assert createlabel_calls(sandbox) == 1


async def test_a_void_cut_off_by_a_crash_between_boxes_is_settled_at_start(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox, tmp_path: Path
) -> None:
    """The process died after recording box 1's void and before the label's: at start the label
    goes to a person and box 1's dead tracking leaves the sale; box 2's stays."""
    client = restartable.client
    assert client is not None
    body = {"sale_id": "sale-multibox", "carrier_code": "fedex", "service_code": "fedex_ground"}
    label = await buy(client, body)
    await until(lambda: status_is(client, label["label_id"], "completed"))
    first, second = label["packages"]
    sandbox.shipments[first["shipment_id"]]["voided"] = True
    await restartable.sql("UPDATE packages SET state = 'voided' WHERE n = 1")

    client = await restartable.restart()
    await until(lambda: restartable.drained(label["label_id"]))
    shown = await label_of(client, label["label_id"])

    assert shown["status"] == "attention" and "interrupted" in shown["detail"]
    assert sale_tracking(cin7_sandbox, "sale-multibox") == {second["tracking_number"]}


async def test_a_second_void_cut_off_by_a_crash_is_finished_at_start(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox, tmp_path: Path
) -> None:
    """A first void is refused for box 2 (label ``attention``, box 1 cleared from the sale); a
    second void voids box 2 at ShipStation, records it, and the process dies before recording
    the label's void. At start the void is finished: the label is ``voided`` and box 2's
    tracking leaves the sale too."""
    client = restartable.client
    assert client is not None
    body = {"sale_id": "sale-multibox", "carrier_code": "fedex", "service_code": "fedex_ground"}
    label = await buy(client, body)
    label_id = label["label_id"]
    await until(lambda: status_is(client, label_id, "completed"))
    second = label["packages"][1]
    sandbox.refused_voids.add(second["shipment_id"])
    refused = await client.post(f"/v1/labels/{label_id}/void", headers=AUTH)
    await until(lambda: restartable.drained(label_id))
    assert sale_tracking(cin7_sandbox, "sale-multibox") == {second["tracking_number"]}
    sandbox.shipments[second["shipment_id"]]["voided"] = True  # the second void, then the crash
    await restartable.sql("UPDATE packages SET state = 'voided' WHERE n = 2")

    client = await restartable.restart()
    await until(lambda: restartable.drained(label_id))
    shown = await label_of(client, label_id)

    assert refused.status == 409
    assert shown["status"] == "voided"
    assert sale_tracking(cin7_sandbox, "sale-multibox") == set()


async def test_an_advanced_sales_next_fulfilment_is_labelled_by_its_task_or_a_new_key(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """The same keyless body is a replay, answered from the ledger before Cin7 Core is read —
    also once the sale's next fulfilment is packed; that one is labelled by naming its task (or
    with a new key), and the first label is never bought again."""
    client = restartable.client
    assert client is not None
    body = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
    first = await buy(client, body)
    await until(lambda: status_is(client, first["label_id"], "completed"))
    cin7_sandbox.add_fulfilment("sale-simple", [("p-mug", 1, "Box 1")])

    replay = await buy(client, body, status=200)
    second = await buy(client, {**body, "task_id": "task-sale-simple-2"})
    third = await buy(client, {**body, "task_id": "task-sale-simple-2"}, status=409, key="n")

    assert replay["label_id"] == first["label_id"]
    assert second["task_id"] == "task-sale-simple-2" and second["label_id"] != first["label_id"]
    assert third["code"] == "already_labelled" and third["label_id"] == second["label_id"]
    assert createlabel_calls(sandbox) == 2
