"""Keyless replays of a bare ``sale_id`` body come from the ledger alone (a review finding on a
change that read the sale first, reverted).

API.md (POST /v1/labels): "A replay is answered from the ledger alone, before any upstream call:
it works while ShipStation or Cin7 Core is down, after the quote expired, after a restart and
after the sale has shipped." Issue 9 point 2 says the same."""

from __future__ import annotations

from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.api.test_labels import buy, createlabel_calls, label_of, until
from tests.labels.conftest import Service

BARE = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}


async def _completed(client, label_id: str) -> bool:  # type: ignore[no-untyped-def]
    return (await label_of(client, label_id))["status"] == "completed"


async def test_keyless_bare_sale_replay_after_shipping_restart_and_outages(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """The sale shipped (write-back done), restart, both upstreams down: the same keyless body
    must be answered from the ledger, without reading Cin7 Core."""
    client = restartable.client
    assert client is not None
    first = await buy(client, BARE)
    await until(lambda: _completed(client, first["label_id"]))
    client = await restartable.restart()
    cin7_sandbox.knobs.down = True
    sandbox.knobs.error_rate = {"*": 1.0}

    replay = await buy(client, BARE, status=200)

    assert replay["label_id"] == first["label_id"]


async def test_keyless_bare_sale_replay_while_shipstation_is_down_before_the_write_back(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Cin7 Core writes failing (the sale still shows the fulfilment unshipped), restart,
    ShipStation down: the replay must not make a plan (which loads the carrier catalogue)."""
    client = restartable.client
    assert client is not None
    cin7_sandbox.knobs.writes_down = True
    first = await buy(client, BARE)
    client = await restartable.restart()
    sandbox.knobs.error_rate = {"*": 1.0}

    replay = await buy(client, BARE, status=200)

    assert replay["label_id"] == first["label_id"]
    assert createlabel_calls(sandbox) == 1


async def test_keyless_bare_sale_replay_after_the_sale_was_voided_in_cin7(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """The label is bought and written back; then the sale is voided in Cin7 Core. The same
    keyless body is still a replay of the live label (not 409 ``sale_not_ready``)."""
    client = restartable.client
    assert client is not None
    first = await buy(client, BARE)
    await until(lambda: _completed(client, first["label_id"]))
    cin7_sandbox.void_sale("sale-simple")

    replay = await buy(client, BARE, status=200)

    assert replay["label_id"] == first["label_id"]
