"""The label lifecycle, model-based: random interleavings against the real service over HTTP.

A Hypothesis ``RuleBasedStateMachine`` drives the real app (``create_app``) over HTTP, in front of
both sandboxes (ShipStation and Cin7 Core) served on 127.0.0.1, and checks the product's promise —
*a fulfilment is labelled once, a bought label is never forgotten, nothing wrong ever lands on the
sale* — after every step. It is black-box: it uses the HTTP API, the sandboxes' state and knobs,
``create_app`` and settings loading, nothing else of ``ratesvc``.

Rules
-----
* an *action* alone, or two actions at once (``together``): buy (``POST /v1/labels`` for a sale,
  with an ``Idempotency-Key`` from a small set or none; by a quote just rated, by an older quote,
  or by carrier and service), retry a request sent before (same key and body), void a label,
  deliver a ``Sale/PackAuthorised`` webhook (once or several times at once; automation is on:
  ``RATESVC_AUTOSHIP=cheapest``);
* Cin7 Core writes failing / recovering (the sandbox's ``writes_down``);
* the carrier refusing to void a label's last box (a two-box label's void is then partial:
  ``attention``, the voided box corrected off the sale), or accepting every void again;
* the next ``createlabel`` calls scripted (``createlabel_faults``: an error before buying, or the
  label bought and its answer lost as a 500, a dropped connection — what a client time-out sees —
  or a late answer). A real time-out is not modelled: the service waits 60 s for ``createlabel``;
  a dropped connection takes the same path (outcome unknown);
* a restart on the same data directory, graceful or abrupt (also in the middle of a purchase);
* time passing (the service runs on real time; settle and retry delays are set small, quotes live
  1 s, so a long step expires them).

How it runs
-----------
Two event loops, each in a daemon thread, keep running for the whole test: the *driver* loop
serves both sandboxes and runs the client side of every rule; the *service* loop runs the app
(an aiohttp ``TestServer`` on 127.0.0.1) as if it were its own process. Hypothesis calls the rules
from the main thread; each rule hands one coroutine to the driver loop
(``run_coroutine_threadsafe(...).result(timeout)``) and blocks until it is done. Both loops keep
turning between rules, so purchases, write-backs and automation go on in the background as in
production; no loop is ever re-entered, nested or closed under a running task, which is what makes
this sturdier than ``asyncio.run`` per rule. The service is started and stopped by coroutines the
driver hands to the service loop.

A *graceful* restart is the app's own shutdown (``TestServer.close``: purchases get the app's grace
period, workers stop, the ledger is closed), then a new app with the same settings. An *abrupt*
restart stands in for ``kill -9``: every task of the service loop is cancelled wherever it is
awaiting, then the app's resources are closed. There is no shutdown-grace setting to shorten, and
waiting out the 30 s grace of a hung purchase per restart is too slow; cancelling every task in the
service's own loop leaves the ledger as a crash would (what was committed stays, nothing more is
written), except that ``finally`` blocks run. (``tests/test_crash_recovery.py`` kills a real
process once.) In the middle of a purchase: ShipStation is scripted to buy and hold its answer
(``hang_after_buy``); the crash comes once the label exists at ShipStation, before the service has
heard of it.

After every step the workers are let drain: ``GET /v1/labels`` and ``GET /v1/automation/events``
are polled (bounded) until no label is ``purchasing``, no event is waiting, and — while Cin7 Core
writes work — no label is ``purchased`` or ``write_back_failed``. Not settling within the bound
(which grows with the time Cin7 Core writes were down, the write-back's back-off) is a failure.

Invariants
----------
After every step:

* no answer is a 5xx other than the documented upstream ones (502 ``upstream_error`` /
  ``upstream_auth``, 503 ``upstream_unavailable``, 504 ``deadline_exceeded``), and every answer is
  one the contract allows for its request; ``GET /v1/labels`` is always 200;
* a replay (same key and body as an earlier success whose label is still live) is 200 with that
  label;
* per fulfilment, at most one live (not voided, not failed) label in the ledger, and at the
  ShipStation sandbox the live shipments all belong to one label, at most one per box (a shipment
  is traced to its sale by its ship-to postal code, not through the ledger);
* a label seen voided stays voided, and its shipments are voided at ShipStation;
* ``attention`` has a ``detail``; ``purchased`` has its write-back pending or done;
* no orphan purchase: every shipment at the sandbox carrying a ratesvc purchase key
  (``advancedOptions.customField1`` = ``<label id>:<n>``) is package *n* of that label in
  ``GET /v1/labels``, and a live shipment's label is not voided or failed.

While Cin7 Core writes work, eventually (bounded poll): no sale carries a voided tracking number,
and every ``completed`` label whose write-back is ``done`` has its tracking on the sale.

Budget and reproducibility
--------------------------
CI runs ``RATESVC_MODEL_EXAMPLES`` (default 100) examples of up to ``RATESVC_MODEL_STEPS``
(default 25) steps with ``derandomize=True`` and no example database: the same examples every
run, so a red CI run is reproduced by the same command anywhere, and nothing a previous run left
on disk changes what CI sees (a fixed seed would give the same, a database would not).
``RATESVC_MODEL_RANDOM=1`` explores new interleavings instead (reproduce one with pytest's
``--hypothesis-seed``); such runs keep Hypothesis' example database (``.hypothesis/``), so a
failure found replays first next time. What a run finds is kept as a plain test in
``test_lifecycle_regressions.py``: the durable record, readable without Hypothesis. The service is
timing-dependent (real concurrency), so a failure may not replay while shrinking (Hypothesis then
says *Flaky*); the failure is still real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.sandbox.cin7 import Cin7Knobs, Cin7Sandbox
from ratesvc.sandbox.knobs import Knobs
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.automation.test_automation import pack_payload
from tests.conftest import AUTH, HOOK, WEBHOOK_URL, automation_env

T = TypeVar("T")

EXAMPLES = int(os.environ.get("RATESVC_MODEL_EXAMPLES", "100"))
STEPS = int(os.environ.get("RATESVC_MODEL_STEPS", "25"))
RANDOM = os.environ.get("RATESVC_MODEL_RANDOM", "") not in ("", "0")

STEP_TIMEOUT_S = 120.0  # one rule, its drain and its checks
ANSWER_TIMEOUT_S = 45.0  # one HTTP answer (the service waits up to 30 s for a purchase)
SETTLE_S = 10.0  # drain bound, plus three times the time Cin7 Core writes were down
EVENTUALLY_S = 2.0  # bound of the eventual checks on the sale, plus the same
HANG_S = 0.3  # how long ShipStation holds a scripted late answer

DOCUMENTED_5XX = {
    (502, "upstream_error"), (502, "upstream_auth"), (503, "upstream_unavailable"),
    (504, "deadline_exceeded"),
}  # fmt: skip
LABEL_REFUSALS = {
    (409, "already_labelled"), (409, "already_shipped"), (409, "reconciling"),
    (409, "sale_changed"), (409, "sale_not_ready"), (410, "quote_expired"),
    (422, "idempotency_key_reused"),
}  # fmt: skip
VOID_REFUSALS = {(409, "already_voided"), (409, "void_rejected"), (409, "reconciling")}
RATE_REFUSALS = {(409, "already_shipped"), (409, "sale_not_ready")}
SETTLED_EVENTS = ("processed", "ignored", "attention")
NOT_LIVE = ("voided", "failed")


@dataclass(frozen=True)
class ModelSale:
    sale_id: str
    boxes: int
    postal_code: str  # the ship-to postal code: how a ShipStation shipment is traced to its sale
    items: tuple[tuple[str, int, str], ...]  # (product, quantity, box)
    city: str
    state: str
    heavy: bool = False  # 2 x 60 kg in one box: no carrier takes it, a 422 is the answer


SALES = (
    ModelSale("model-one", 1, "60601", (("p-bread", 2, "Box 1"),), "Chicago", "IL"),
    ModelSale("model-two", 2, "80202", (("p-flour", 1, "Box 1"), ("p-mug", 2, "Box 2")),
              "Denver", "CO"),
    ModelSale("model-heavy", 1, "97205", (("p-anvil", 2, "Box 1"),), "Portland", "OR",
              heavy=True),
)  # fmt: skip
BY_ID = {sale.sale_id: sale for sale in SALES}
SERVICES = (("ups", "ups_ground"), ("fedex", "fedex_ground"), ("stamps_com", "usps_priority_mail"))
KEYS = (None, "key-a", "key-b", "key-c")
FAULTS = ("ok", "error_before_buy", "lost_after_buy", "drop_after_buy", "hang_after_buy")


def seeded_cin7() -> Cin7Sandbox:
    """The Cin7 Core sandbox with the model's sales: packed, distinct ship-to postal codes."""
    cin7 = Cin7Sandbox(knobs=Cin7Knobs(rate_limit=100_000))
    cin7.products["p-anvil"] = {
        "ID": "p-anvil", "Type": "Stock", "SKU": "Anvil", "Name": "Anvil 60 kg", "Weight": 60,
        "WeightUnits": "kg", "Length": 40, "Width": 20, "Height": 25, "DimensionsUnits": "cm",
    }  # fmt: skip
    for number, sale in enumerate(SALES, start=1):
        address = {
            "Line1": f"{number}00 Main St", "Line2": None, "City": sale.city,
            "State": sale.state, "Postcode": sale.postal_code, "Country": "US",
            "Company": f"Model Customer {number}", "Contact": f"Pat Model {number}",
        }  # fmt: skip
        cin7.add_sale(sale.sale_id, f"SO-9{number:03d}", f"Model Customer {number}", address,
                      list(sale.items))  # fmt: skip
    return cin7


# --- actions: what a rule does over HTTP, alone or two at once ---------------------------------


@dataclass(frozen=True)
class Buy:
    sale: str
    how: str  # "service" | "fresh_quote" | "old_quote"
    key: str | None
    pick: int  # which service, or which quote


@dataclass(frozen=True)
class Retry:
    pick: int  # which earlier request


@dataclass(frozen=True)
class Void:
    pick: int  # which known label


@dataclass(frozen=True)
class Webhook:
    sale: str
    times: int  # deliveries at once


Action = Buy | Retry | Void | Webhook

sale_ids = st.sampled_from([sale.sale_id for sale in SALES])
buys = st.builds(
    Buy, sale=sale_ids, how=st.sampled_from(("service", "fresh_quote", "old_quote")),
    key=st.sampled_from(KEYS), pick=st.integers(0, 5),
)  # fmt: skip
actions: st.SearchStrategy[Action] = st.one_of(
    buys,
    st.builds(Retry, pick=st.integers(0, 20)),
    st.builds(Void, pick=st.integers(0, 20)),
    st.builds(Webhook, sale=sale_ids, times=st.integers(1, 3)),
)


@dataclass
class Answer:
    status: int  # 0: no answer (the service went away)
    body: Any

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None


class Violation(AssertionError):
    """The service broke its contract."""


# --- the two loops ---------------------------------------------------------------------------


class LoopThread:
    """An event loop turning in a daemon thread until closed."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on this loop from another thread and wait for it."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this loop from a coroutine on another loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class Loops:
    driver: LoopThread
    service: LoopThread


class Service:
    """The app under test, alive in the service loop."""

    def __init__(self, loops: Loops, settings_env: dict[str, str]) -> None:
        self._loops = loops
        self._env = settings_env
        self._server: TestServer | None = None
        self.url = ""

    async def start(self) -> None:
        async def start() -> str:
            self._server = TestServer(create_app(load_settings(self._env)), host="127.0.0.1")
            await self._server.start_server()
            return str(self._server.make_url("")).rstrip("/")

        self.url = await self._loops.service.call(start())

    async def stop(self, *, abrupt: bool) -> None:
        async def stop() -> None:
            if abrupt:  # every task of the "process" stops where it is
                me = asyncio.current_task()
                for _ in range(10):
                    others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
                    if not others:
                        break
                    for task in others:
                        task.cancel()
                    await asyncio.wait(others, timeout=1.0)
            if self._server is not None:
                await self._server.close()
                self._server = None

        await self._loops.service.call(stop())


# --- the model -------------------------------------------------------------------------------


@dataclass
class World:
    """Per example: both sandboxes served by the driver loop, the service, a client."""

    shipstation: ShipStationSandbox
    cin7: Cin7Sandbox
    servers: list[TestServer]
    service: Service
    session: aiohttp.ClientSession
    data: Path
    labels_known: list[str] = field(default_factory=list)
    sent: list[tuple[str | None, str]] = field(default_factory=list)  # (key, body as JSON)
    replays: dict[tuple[str | None, str], str] = field(default_factory=dict)  # -> label id
    quotes: list[str] = field(default_factory=list)
    seen_voided: set[str] = field(default_factory=set)
    writes_down_since: float | None = None
    writes_down_total: float = 0.0
    crashing: bool = False
    notes: list[str] = field(default_factory=list)  # told to Hypothesis from the main thread
    transcript: list[str] = field(default_factory=list)  # every step and answer of the example


class LabelLifecycle(RuleBasedStateMachine):
    def __init__(self, loops: Loops) -> None:
        super().__init__()
        self.loops = loops
        self.clean = True  # no step failed: the final checks are worth running
        self.w = self._run(self._open())

    # --- plumbing ------------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loops.driver.run(coro, STEP_TIMEOUT_S)

    def _step(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run one rule's coroutine, let the service settle, check the invariants.

        What happened is told to Hypothesis (``note``) and kept in a transcript that a failure
        carries: a failure that does not replay while shrinking (Hypothesis says *Flaky* and
        prints no example) still shows the steps and answers that led to it."""
        self.clean = False
        try:
            self._run(self._then_check(coro))
        except BaseException as exc:
            self.w.transcript += [*self.w.notes, f"state.{what}  <- failed here"]
            exc.add_note("transcript of the example:\n  " + "\n  ".join(self.w.transcript))
            raise
        finally:
            for line in self.w.notes:
                note(line)
        self.w.transcript += [*self.w.notes, f"state.{what}"]
        self.w.notes.clear()
        self.clean = True

    async def _then_check(self, coro: Coroutine[Any, Any, None]) -> None:
        await coro
        await self._settle_and_check()

    async def _open(self) -> World:
        shipstation = ShipStationSandbox(knobs=Knobs(rate_limit=100_000, hang_s=HANG_S))
        cin7 = seeded_cin7()
        servers = [TestServer(shipstation.app, host="127.0.0.1"),
                   TestServer(cin7.app, host="127.0.0.1")]  # fmt: skip
        for server in servers:
            await server.start_server()
        ss_url, cin7_url = (str(s.make_url("")).rstrip("/") for s in servers)
        data = Path(tempfile.mkdtemp(prefix="ratesvc-model-"))
        env = automation_env(
            ss_url, cin7_url, data / "data", RATESVC_SHIPSTATION_RATE_LIMIT="10000",
            RATESVC_CIN7_WINDOW_S="1", RATESVC_QUOTE_TTL_S="1",
        )  # fmt: skip
        service = Service(self.loops, env)
        await service.start()
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ANSWER_TIMEOUT_S))
        return World(shipstation, cin7, servers, service, session, data)

    async def _close(self) -> None:
        w = self.w
        await w.service.stop(abrupt=True)
        await w.session.close()
        for server in w.servers:
            await server.close()
        shutil.rmtree(w.data, ignore_errors=True)

    def teardown(self) -> None:
        try:
            if self.clean:  # a failed step is reported as it is, not masked by these
                self._run(self._final())
        finally:
            self._run(self._close())

    async def _final(self) -> None:
        self._writes(down=False)
        self.w.shipstation.knobs.createlabel_faults.clear()
        await self._settle_and_check()

    async def _http(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        w = self.w
        try:
            async with w.session.request(
                method, w.service.url + path, json=body, headers=headers or AUTH
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientConnectionError, aiohttp.ServerDisconnectedError):
            if w.crashing:
                w.notes.append(f"{method} {path} {json.dumps(body)} -> no answer (stopped)")
                return Answer(0, None)
            raise
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = text
        answer = Answer(status, payload)
        key = (headers or {}).get("Idempotency-Key")
        summary = answer.code or (payload.get("status") if isinstance(payload, dict) else "")
        if method != "GET":
            w.notes.append(f"{method} {path} key={key} {json.dumps(body)} -> {status} {summary}")
        if status >= 500 and (status, answer.code) not in DOCUMENTED_5XX:
            raise Violation(f"{method} {path} answered an undocumented {status}: {payload}")
        return answer

    # --- actions -------------------------------------------------------------------------------

    async def _act(self, action: Action) -> None:
        if isinstance(action, Buy):
            await self._buy(action)
        elif isinstance(action, Retry):
            if self.w.sent:
                key, body = self.w.sent[action.pick % len(self.w.sent)]
                await self._label_request(key, json.loads(body))
        elif isinstance(action, Void):
            await self._void(action)
        else:
            await self._webhook(action)

    async def _buy(self, action: Buy) -> None:
        w = self.w
        if action.how == "service":
            carrier, service = SERVICES[action.pick % len(SERVICES)]
            body: dict[str, Any] = {"sale_id": action.sale, "carrier_code": carrier,
                                    "service_code": service}  # fmt: skip
        elif action.how == "fresh_quote" or not w.quotes:
            rated = await self._http("POST", "/v1/rates", body={"sale_id": action.sale})
            if rated.status != 200:
                refusal = (rated.status, rated.code)
                heavy = BY_ID[action.sale].heavy and refusal == (422, "invalid_request")
                if rated.status < 500 and refusal not in RATE_REFUSALS and not heavy:
                    raise Violation(f"POST /v1/rates answered {rated.status}: {rated.body}")
                return
            quotes = rated.body["quotes"]
            if not quotes:
                return
            body = {"quote_id": quotes[action.pick % len(quotes)]["quote_id"]}
            w.quotes.append(body["quote_id"])
        else:
            body = {"quote_id": w.quotes[action.pick % len(w.quotes)]}
        await self._label_request(action.key, body)

    async def _label_request(self, key: str | None, body: dict[str, Any]) -> None:
        w = self.w
        ident = (key, json.dumps(body, sort_keys=True))
        if ident not in w.sent:
            w.sent.append(ident)
        earlier = w.replays.get(ident)
        replay = earlier is not None and await self._live(earlier)
        headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
        answer = await self._http("POST", "/v1/labels", body=body, headers=headers)
        if answer.status == 0:
            return
        if answer.status in (200, 201):
            label_id = answer.body["label_id"]
            w.replays[ident] = label_id
            if label_id not in w.labels_known:
                w.labels_known.append(label_id)
        elif answer.status < 500 and not self._allowed_refusal(answer, body):
            raise Violation(f"POST /v1/labels answered {answer.status}: {answer.body}")
        if replay and earlier is not None and await self._live(earlier):
            # the same key and body as an earlier success whose label is still live, before and
            # after: a replay, answered from the ledger whatever happened since
            assert (answer.status, (answer.body or {}).get("label_id")) == (200, earlier), (
                f"a replay of label {earlier} (key {key}, body {body}) answered "
                f"{answer.status} {answer.code or ''}: {answer.body}"
            )

    @staticmethod
    def _allowed_refusal(answer: Answer, body: dict[str, Any]) -> bool:
        if (answer.status, answer.code) in LABEL_REFUSALS:
            return True
        if "quote_id" in body and (answer.status, answer.code) == (404, "not_found"):
            return True  # quotes are not kept across a restart
        heavy = body.get("sale_id") in BY_ID and BY_ID[body["sale_id"]].heavy
        return heavy and (answer.status, answer.code) == (422, "invalid_request")

    async def _live(self, label_id: str) -> bool:
        answer = await self._http("GET", f"/v1/labels/{label_id}")
        assert answer.status == 200, f"GET /v1/labels/{label_id} answered {answer.status}"
        return answer.body["status"] not in NOT_LIVE

    async def _void(self, action: Void) -> None:
        w = self.w
        if not w.labels_known:
            return
        label_id = w.labels_known[action.pick % len(w.labels_known)]
        answer = await self._http("POST", f"/v1/labels/{label_id}/void")
        if answer.status == 200:
            assert answer.body["status"] == "voided", f"void answered 200 with {answer.body}"
            w.seen_voided.add(label_id)
        elif 0 < answer.status < 500 and (answer.status, answer.code) not in VOID_REFUSALS:
            raise Violation(f"POST /v1/labels/{label_id}/void answered {answer.status}: "
                            f"{answer.body}")  # fmt: skip

    async def _webhook(self, action: Webhook) -> None:
        payload = pack_payload(self.w.cin7, action.sale)
        answers = await asyncio.gather(*(
            self._http("POST", WEBHOOK_URL, body=payload, headers=HOOK)
            for _ in range(action.times)
        ))  # fmt: skip
        for answer in answers:
            if answer.status not in (0, 200, 202):
                raise Violation(f"the webhook answered {answer.status}: {answer.body}")

    def _writes(self, *, down: bool) -> None:
        w = self.w
        loop = asyncio.get_running_loop()
        if down and w.writes_down_since is None:
            w.writes_down_since = loop.time()
        if not down and w.writes_down_since is not None:
            w.writes_down_total += loop.time() - w.writes_down_since
            w.writes_down_since = None
        w.cin7.knobs.writes_down = down

    async def _restart(self, *, abrupt: bool, during: Action | None = None) -> None:
        w = self.w
        if during is None:
            await w.service.stop(abrupt=abrupt)
            await w.service.start()
            return
        w.shipstation.knobs.createlabel_faults.insert(0, "hang_after_buy")
        if abrupt:  # the answer must not come before the crash; a graceful stop waits for it
            w.shipstation.knobs.hang_s = 10.0
        bought = len(w.shipstation.shipments)
        w.crashing = True
        task = asyncio.create_task(self._act(during))
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 10
            while len(w.shipstation.shipments) == bought and not task.done():
                assert loop.time() < end, "the purchase never reached ShipStation"
                await asyncio.sleep(0.005)
        finally:
            await w.service.stop(abrupt=abrupt)
            (outcome,) = await asyncio.gather(
                asyncio.wait_for(task, ANSWER_TIMEOUT_S), return_exceptions=True
            )
            w.crashing = False
            w.shipstation.knobs.hang_s = HANG_S
            faults = w.shipstation.knobs.createlabel_faults
            if faults and faults[0] == "hang_after_buy" and len(w.shipstation.shipments) == bought:
                faults.pop(0)  # the purchase was refused before buying: nothing to interrupt
            await w.service.start()
        if isinstance(outcome, BaseException):
            raise outcome

    # --- settling and the invariants -----------------------------------------------------------

    def _down_s(self) -> float:
        w = self.w
        ongoing = 0.0
        if w.writes_down_since is not None:
            ongoing = asyncio.get_running_loop().time() - w.writes_down_since
        return w.writes_down_total + ongoing

    async def _labels(self) -> list[dict[str, Any]]:
        labels: list[dict[str, Any]] = []
        cursor = ""
        while True:
            answer = await self._http("GET", f"/v1/labels?limit=100{cursor}")
            assert answer.status == 200, f"GET /v1/labels answered {answer.status}: {answer.body}"
            labels += answer.body["labels"]
            if not answer.body.get("next_cursor"):
                return labels
            cursor = f"&cursor={answer.body['next_cursor']}"

    async def _events(self) -> list[dict[str, Any]]:
        answer = await self._http("GET", "/v1/automation/events?limit=100")
        assert answer.status == 200, f"GET /v1/automation/events answered {answer.status}"
        events: list[dict[str, Any]] = answer.body["events"]
        return events

    async def _settle_and_check(self) -> None:
        labels = await self._settle()
        for label in labels:
            if label["label_id"] not in self.w.labels_known:
                self.w.labels_known.append(label["label_id"])
        self._check_labels(labels)
        self._check_one_label_per_fulfilment(labels)
        self._check_shipstation_per_fulfilment()
        self._check_voided(labels)
        self._check_no_orphans(labels)
        if not self.w.cin7.knobs.writes_down:
            await self._check_sales()

    async def _settle(self) -> list[dict[str, Any]]:
        """Poll (bounded) until nothing is in flight; the labels as they then are."""
        loop = asyncio.get_running_loop()
        bound = SETTLE_S + 3 * self._down_s()
        end = loop.time() + bound
        while True:
            labels = await self._labels()
            busy = [label for label in labels if label["status"] == "purchasing"]
            if not self.w.cin7.knobs.writes_down:
                busy += [label for label in labels
                         if label["status"] in ("purchased", "write_back_failed")]  # fmt: skip
            waiting = [e for e in await self._events() if e["status"] not in SETTLED_EVENTS]
            if not busy and not waiting:
                return labels
            if loop.time() > end:
                stuck = [(label["label_id"], label["sale_id"], label["status"],
                          label["write_back"], label["detail"]) for label in busy]  # fmt: skip
                late = [(e.get("sale_id"), e["status"], e.get("reason")) for e in waiting]
                raise Violation(f"not settled after {bound:.0f} s: labels {stuck}, events {late}")
            await asyncio.sleep(0.01)

    def _check_labels(self, labels: list[dict[str, Any]]) -> None:
        for label in labels:
            if label["status"] == "attention":
                assert label["detail"], f"label {label['label_id']} is in attention with no detail"
            if label["status"] == "purchased":
                assert label["write_back"]["state"] in ("pending", "done"), (
                    f"purchased label {label['label_id']} has write-back {label['write_back']}"
                )

    def _check_one_label_per_fulfilment(self, labels: list[dict[str, Any]]) -> None:
        live: dict[tuple[str, str], list[str]] = {}
        for label in labels:
            if label["sale_id"] and label["status"] not in NOT_LIVE:
                fulfilment = (label["sale_id"], label["task_id"])
                live.setdefault(fulfilment, []).append(f"{label['label_id']} ({label['status']})")
        for (sale_id, task_id), ids in live.items():
            assert len(ids) <= 1, f"fulfilment {task_id} of {sale_id} has live labels {ids}"

    def _check_shipstation_per_fulfilment(self) -> None:
        by_sale: dict[str, list[tuple[int, str]]] = {}
        for shipment in self.w.shipstation.shipments.values():
            if shipment["voided"]:
                continue
            postal = str(shipment["shipTo"].get("postalCode", ""))[:5]
            sale = next((s for s in SALES if s.postal_code == postal), None)
            assert sale is not None, f"a shipment to an unknown address: {shipment['shipTo']}"
            by_sale.setdefault(sale.sale_id, []).append(
                (shipment["shipmentId"], _purchase_key(shipment) or "")
            )
        for sale_id, live in by_sale.items():
            owners = {key.rsplit(":", 1)[0] for _, key in live}
            assert len(owners) <= 1 and len(live) <= BY_ID[sale_id].boxes, (
                f"{sale_id} has {len(live)} live labels at ShipStation (purchase keys "
                f"{sorted(key for _, key in live)}); it has {BY_ID[sale_id].boxes} box(es)"
            )

    def _check_voided(self, labels: list[dict[str, Any]]) -> None:
        shipments = self.w.shipstation.shipments
        for label in labels:
            label_id = label["label_id"]
            if label["status"] == "voided":
                self.w.seen_voided.add(label_id)
                for package in label["packages"]:
                    shipment = shipments.get(package["shipment_id"] or -1)
                    assert shipment is None or shipment["voided"], (
                        f"label {label_id} says voided; shipment {package['shipment_id']} is "
                        "live at ShipStation"
                    )
            elif label_id in self.w.seen_voided:
                raise Violation(f"label {label_id} was voided and is now {label['status']}")

    def _check_no_orphans(self, labels: list[dict[str, Any]]) -> None:
        by_id = {label["label_id"]: label for label in labels}
        for shipment in self.w.shipstation.shipments.values():
            key = _purchase_key(shipment)
            if key is None:
                continue
            label_id, n = key.rsplit(":", 1)
            label = by_id.get(label_id)
            assert label is not None, f"shipment {shipment['shipmentId']} ({key}) has no label"
            packages = label["packages"]
            package = packages[int(n) - 1] if int(n) <= len(packages) else None
            assert package is not None and package["shipment_id"] == shipment["shipmentId"], (
                f"shipment {shipment['shipmentId']} ({key}, voided: {shipment['voided']}) is "
                f"not known to its label {label_id} ({label['status']}): {packages}"
            )
            if not shipment["voided"]:
                assert label["status"] not in NOT_LIVE and package["state"] != "voided", (
                    f"shipment {shipment['shipmentId']} is live at ShipStation but label "
                    f"{label_id} is {label['status']} (package {package['state']})"
                )

    async def _check_sales(self) -> None:
        """Eventually (bounded): no voided tracking on a sale; written-back labels are there."""
        loop = asyncio.get_running_loop()
        end = loop.time() + EVENTUALLY_S + 3 * self._down_s()
        while True:
            problems = self._sale_problems(await self._labels())
            if not problems:
                return
            if loop.time() > end:
                raise Violation("; ".join(problems))
            await asyncio.sleep(0.01)

    def _sale_problems(self, labels: list[dict[str, Any]]) -> list[str]:
        voided = {s["trackingNumber"] for s in self.w.shipstation.shipments.values() if s["voided"]}
        problems = []
        for sale in SALES:
            lines = self.w.cin7.fulfilment(sale.sale_id)["Ship"]["Lines"]
            on_sale = {line["TrackingNumber"] for line in lines if line["TrackingNumber"]}
            if landed := sorted(on_sale & voided):
                problems.append(f"{sale.sale_id} carries voided tracking {landed}")
            for label in labels:
                done = label["status"] == "completed" and label["write_back"]["state"] == "done"
                if label["sale_id"] == sale.sale_id and done:
                    ours = {p["tracking_number"] for p in label["packages"]}
                    if not ours <= on_sale:
                        problems.append(
                            f"{sale.sale_id}: completed label {label['label_id']}'s tracking "
                            f"{sorted(ours - on_sale)} is not on the sale ({sorted(on_sale)})"
                        )
        return problems

    # --- rules ---------------------------------------------------------------------------------

    @rule(action=actions)
    def step(self, action: Action) -> None:
        self._step(self._act(action), f"step(action={action!r})")

    @rule(first=actions, second=actions)
    def together(self, first: Action, second: Action) -> None:
        async def both() -> None:
            await asyncio.gather(self._act(first), self._act(second))

        self._step(both(), f"together(first={first!r}, second={second!r})")

    @rule(down=st.booleans())
    def cin7_writes(self, down: bool) -> None:
        async def switch() -> None:
            self._writes(down=down)

        self._step(switch(), f"cin7_writes(down={down})")

    @rule(failures=st.integers(0, 5), then=st.sampled_from(FAULTS))
    def createlabel_faults(self, failures: int, then: str) -> None:
        """The next purchases: ``failures`` errors before buying, then ``then``."""

        async def script() -> None:
            self.w.shipstation.knobs.createlabel_faults += ["error_before_buy"] * failures + [then]

        self._step(script(), f"createlabel_faults(failures={failures}, then={then!r})")

    @rule(pick=st.integers(0, 7), refuse=st.booleans())
    def carrier_refuses_voids(self, pick: int, refuse: bool) -> None:
        """The carrier refuses to void the last box of one label (already scanned) — a void of
        a two-box label is then partial — or, with ``refuse`` false, accepts every void again."""

        async def script() -> None:
            w = self.w
            if not refuse:
                w.shipstation.refused_voids.clear()
                return
            if not w.labels_known:
                return
            label_id = w.labels_known[pick % len(w.labels_known)]
            answer = await self._http("GET", f"/v1/labels/{label_id}")
            boxes = [p["shipment_id"] for p in answer.body["packages"] if p["shipment_id"]]
            if boxes:
                w.shipstation.refused_voids.add(boxes[-1])

        self._step(script(), f"carrier_refuses_voids(pick={pick}, refuse={refuse})")

    @rule(abrupt=st.booleans())
    def restart(self, abrupt: bool) -> None:
        self._step(self._restart(abrupt=abrupt), f"restart(abrupt={abrupt})")

    @rule(during=buys, abrupt=st.booleans())
    def restart_mid_purchase(self, during: Buy, abrupt: bool) -> None:
        self._step(
            self._restart(abrupt=abrupt, during=during),
            f"restart_mid_purchase(during={during!r}, abrupt={abrupt})",
        )

    @rule(seconds=st.sampled_from((0.05,) * 7 + (1.1,)))  # 1.1 s expires quotes; shrinks to 0.05
    def time_passes(self, seconds: float) -> None:
        self._step(asyncio.sleep(seconds), f"time_passes(seconds={seconds})")


def _purchase_key(shipment: dict[str, Any]) -> str | None:
    """ratesvc's purchase key (``<label id>:<n>``) on a ShipStation shipment, if it has one."""
    key = (shipment.get("advancedOptions") or {}).get("customField1")
    return key if isinstance(key, str) and key.startswith("lb_") and ":" in key else None


@pytest.fixture(scope="module")
def loops() -> Any:
    both = Loops(driver=LoopThread("model-driver"), service=LoopThread("model-service"))
    yield both
    both.service.close()
    both.driver.close()


def _settings() -> settings:
    common: dict[str, Any] = {
        "max_examples": EXAMPLES,
        "stateful_step_count": STEPS,
        "deadline": None,
        "suppress_health_check": list(HealthCheck),
    }
    if RANDOM:
        return settings(**common)
    return settings(derandomize=True, database=None, **common)


@pytest.mark.timeout(0)  # bounded by the budget, every step and every wait
def test_label_lifecycle_model(loops: Loops) -> None:
    run_state_machine_as_test(lambda: LabelLifecycle(loops), settings=_settings())
