"""Buying labels exactly once; reading, voiding and forgetting them.

A purchase is recorded before anything is bought: one ledger row holding the plan, the request's
hash, the client's ``Idempotency-Key`` (if any) and — for a sale — the *fulfilment claim*
(account + sale + task), each unique among live labels; one row per package with its purchase key
(``<label>:<n>``). Then one :class:`PurchaseUnit` per label buys it (see :mod:`.purchase`).

The rules, in the order they are applied (the first two from the ledger alone, before any
upstream call, so they hold while ShipStation or Cin7 Core is down, after a restart, after the
quote expired and after the sale shipped):

1. **Replay.** The client's key names a label: the same body gets that label (200, whatever its
   status, voided included); another body is ``idempotency_key_reused``. Without a key, the same
   body naming the same fulfilment as the live label holding it is a replay too.
2. **One live label per fulfilment.** A request for a fulfilment a live label holds is
   ``already_labelled`` (naming it) — or ``reconciling`` while that label's outcome at ShipStation
   is unknown. A void or a purchase that bought nothing (``failed``) releases the fulfilment.
3. Otherwise the plan is made (:mod:`.plan`: the sale is read, what changed since quoting is
   ``sale_changed``), recorded, and bought. Identical requests arriving together share one
   attempt.

A purchase that bought nothing also frees the client's key, so a retry with it tries again; a
voided label keeps its key (a replay answers the voided label; relabel with a new key or none).

Across replicas a label is bought by the one replica holding its lease (see :mod:`.purchase`).
A request on another replica for a label being bought there (a replay, a duplicate) does not
start buying: it watches the label's row in the ledger until it is bought or ``wait_s`` passes.
Every replica adopts, at start and then every third of the lease TTL, the unfinished purchases
whose lease is free or expired (their replica died): they are resumed like any unit — an
``unknown`` package reconciled against ShipStation before anything is bought again.

Whether an ``unknown`` package is a label *being bought* (``already_labelled``) or an outcome
*being reconciled* (``reconciling``) is read from the ledger, so every replica answers alike: a
unit reconciling holds a second lease, ``reconciling:<label id>``, while it looks for the
outcome at ShipStation. A label whose purchase lease a live owner holds and whose reconciling
lease nobody does is being bought (its ``createlabel`` call is out, or about to be); a purchase
lease expired (the buyer died) or a reconciling lease held means the outcome is unknown.

Voids: one at a time per label — in a process a lock, across replicas the label's void lease
(``void:<label id>``, see :mod:`.void`). A void that finds another running waits for it and
then runs itself (so a duplicate answers ``already_voided`` once the first voided the label,
whichever replica each landed on). A void cut off midway (its replica died) leaves its lease to
expire: every replica sweeps expired void leases as it adopts purchases and settles those voids.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable

import msgspec

from ratesvc.accounts import AccountServices
from ratesvc.errors import (
    AlreadyLabelled,
    IdempotencyKeyReused,
    NotFound,
    Reconciling,
    RequestError,
    UpstreamFailure,
    VoidRejected,
)
from ratesvc.labels.documents import CUSTOMS, LABEL, package_pdf
from ratesvc.labels.lifecycle import LabelStatus, PackageState
from ratesvc.labels.models import Label, LabelsRequest
from ratesvc.labels.plan import fulfilment_key, make_plan, stored_quote
from ratesvc.labels.printing import merged_label_pdf
from ratesvc.labels.purchase import (
    PURCHASE_LEASE,
    RECONCILING_LEASE,
    LabelTiming,
    PurchaseUnit,
)
from ratesvc.labels.retention import Retention
from ratesvc.labels.views import label_view
from ratesvc.labels.void import VOID_LEASE, settle_interrupted_voids, void_label
from ratesvc.quotes import QuoteStoreProtocol
from ratesvc.storage.leases import Lease, renew_every
from ratesvc.storage.ledger import (
    IdempotencyConflict,
    IllegalTransition,
    LeaseLost,
    Ledger,
    PurchaseRow,
    now_text,
)

log = logging.getLogger(__name__)

S = LabelStatus
HOUSEKEEPING_S = 3600.0
WATCH_S = (0.05, 1.0)  # watching a label another replica buys: first and longest pause


class Labels:
    def __init__(
        self,
        ledger: Ledger,
        *,
        quotes: QuoteStoreProtocol,
        accounts: dict[str, AccountServices],
        timing: LabelTiming,
        on_queued: Callable[[], None] = lambda: None,
        retention_days: float = 90.0,
    ) -> None:
        """``on_queued`` is called when a write-back job was queued (to wake the worker)."""
        self._on_queued = on_queued
        self._ledger = ledger
        self._quotes = quotes
        self._accounts = accounts
        self._timing = timing
        self.retention = Retention(ledger, retention_days)
        self._units: dict[str, tuple[asyncio.Task[bool], PurchaseUnit]] = {}
        self._together: dict[tuple[str, str, str], asyncio.Task[tuple[str, bool]]] = {}
        self._void_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        self._adopting: asyncio.Task[None] | None = None

    # --- buying --------------------------------------------------------------------------------

    async def buy(
        self,
        services: AccountServices,
        request: LabelsRequest,
        idem_key: str | None,
        *,
        sale_checked: bool = False,
    ) -> tuple[Label, bool]:
        """(the label, True when this call created it).

        Identical requests (same account, body and key) arriving together share one attempt.
        ``sale_checked``: the caller read the quoted sale moments ago (automation), so it is not
        read again before buying.
        """
        request_hash = hashlib.sha256(msgspec.json.encode(request)).hexdigest()
        together = (services.account.name, idem_key or "", request_hash)
        task = self._together.get(together)
        first = task is None
        if task is None:
            task = asyncio.create_task(
                self._buy(services, request, idem_key, request_hash, sale_checked)
            )
            self._together[together] = task
            task.add_done_callback(lambda _: self._together.pop(together, None))
        label_id, created = await asyncio.shield(task)
        return await self.view(label_id, services.account.name), created and first

    async def _buy(
        self,
        services: AccountServices,
        request: LabelsRequest,
        idem_key: str | None,
        request_hash: str,
        sale_checked: bool,
    ) -> tuple[str, bool]:
        account = services.account.name
        known = await self._known(services, request, idem_key, request_hash)
        if known is not None:
            await self._wait(known, services)
            return known, False
        relabel = request.sale_id is not None or request.quote_id is not None
        plan = await make_plan(
            services, request, self._quotes, sale_checked=sale_checked,
            relabel=relabel and await self._relabel_allowed(services, request),
        )  # fmt: skip
        label_id = "lb_" + secrets.token_urlsafe(12)
        stamp = now_text()
        row = PurchaseRow(
            label_id=label_id, account=account, idem_key=idem_key, request_hash=request_hash,
            plan=msgspec.json.encode(plan), status=S.PURCHASING, detail=None,
            sale_id=plan.sale_id, task_id=plan.task_id,
            write_back_state="pending" if plan.write_back else "not_requested",
            write_back_attempts=0, write_back_error=None, created_at=stamp, updated_at=stamp,
            voided_at=None,
            fulfilment_key=fulfilment_key(plan.sale_id, plan.task_id)
            if plan.sale_id and plan.task_id else None, order_number=plan.order_number,
        )  # fmt: skip
        packages = [(n, p.box, f"{label_id}:{n}") for n, p in enumerate(plan.packages, start=1)]
        try:
            await self._ledger.create_purchase(row, packages)
        except IdempotencyConflict as conflict:
            existing = conflict.existing
            await self._refuse_unless_replay(existing, idem_key, request_hash)
            await self._wait(existing.label_id, services)
            return existing.label_id, False
        await self._wait(label_id, services)
        return label_id, True

    async def _known(
        self,
        services: AccountServices,
        request: LabelsRequest,
        idem_key: str | None,
        request_hash: str,
    ) -> str | None:
        """From the ledger alone: the label this request replays (or a refusal), or None when
        the request is new. Nothing upstream is called."""
        account = services.account.name
        if idem_key is not None:
            existing = await self._ledger.purchase_by_key(account, idem_key)
            if existing is not None:
                await self._refuse_unless_replay(existing, idem_key, request_hash)
                return existing.label_id
        if idem_key is None:  # the same body as a keyless request whose label is still live
            same = await self._ledger.live_purchase_by_request(account, request_hash)
            if same is not None:
                return same.label_id
        claim = await self._claimed_fulfilment(services, request)
        if claim is None:
            return None
        holder = await self._ledger.purchase_by_fulfilment(account, claim)
        if holder is None:
            return None
        await self._refuse_unless_replay(holder, idem_key, request_hash)
        return holder.label_id

    async def _claimed_fulfilment(
        self, services: AccountServices, request: LabelsRequest
    ) -> str | None:
        """The fulfilment the request names without reading the sale (a quote of a sale, or a
        sale with its task), or None."""
        if request.quote_id is not None:
            quote = await self._quotes.get(request.quote_id)
            if quote is None or quote.account != services.account.name:
                return None
            if quote.sale_id is None or quote.task_id is None:
                return None
            return fulfilment_key(quote.sale_id, quote.task_id)
        if request.sale_id is not None and request.task_id is not None:
            return fulfilment_key(request.sale_id, request.task_id)
        return None

    async def _refuse_unless_replay(
        self, existing: PurchaseRow, idem_key: str | None, request_hash: str
    ) -> None:
        """``existing`` was found by this request's key or fulfilment: return if the request
        replays it, raise the refusal otherwise."""
        if idem_key is not None and existing.idem_key == idem_key:
            if existing.request_hash != request_hash:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used with a different request body",
                    label_id=existing.label_id,
                )
            return
        if existing.idem_key is None and idem_key is None and existing.request_hash == request_hash:
            return
        if await self._unknown_outcome(existing.label_id):
            raise Reconciling(
                f"label {existing.label_id} of fulfilment {existing.task_id} of sale "
                f"{existing.sale_id} has a purchase whose outcome at ShipStation is still "
                "unknown; nothing more is bought until it is settled",
                label_id=existing.label_id,
            )
        raise AlreadyLabelled(
            f"fulfilment {existing.task_id} of sale {existing.sale_id} already has label "
            f"{existing.label_id} ({existing.status}); void it to label the fulfilment again",
            label_id=existing.label_id,
        )

    async def _unknown_outcome(self, label_id: str) -> bool:
        """A package's outcome is unknown and being reconciled (or waiting for a replica to
        reconcile it) — not a label simply being bought, whichever replica buys it: a
        ``createlabel`` call of this process waiting for its answer, or an ``unknown`` package
        of a label whose purchase lease a live owner holds while nobody holds its reconciling
        lease (that owner's unit is buying, not reconciling)."""
        running = self._units.get(label_id)
        if running is not None and running[1].calling:
            return False
        packages = await self._ledger.packages(label_id)
        if not any(p.state == PackageState.UNKNOWN for p in packages):
            return False
        return not await self._being_bought(label_id)

    async def _being_bought(self, label_id: str) -> bool:
        """From the ledger: a live owner drives the label's purchase and is not reconciling."""
        buyer = await self._ledger.lease(f"{PURCHASE_LEASE}{label_id}")
        if buyer is None or buyer[1] <= 0:  # nobody, or a replica that died: unknown
            return False
        reconciler = await self._ledger.lease(f"{RECONCILING_LEASE}{label_id}")
        return reconciler is None or reconciler[1] <= 0

    async def _relabel_allowed(self, services: AccountServices, request: LabelsRequest) -> bool:
        """A sale whose earlier labels were voided may be labelled again although its Ship stays
        authorised (Cin7 Core cannot un-authorise it; the void cleared the tracking)."""
        sale_id = request.sale_id
        if sale_id is None and request.quote_id is not None:
            with contextlib.suppress(Exception):
                stored = await stored_quote(self._quotes, services.account, request.quote_id)
                sale_id = stored.sale_id
        if sale_id is None:
            return False
        voided = await self._ledger.purchases(
            services.account.name, sale_id=sale_id, status=S.VOIDED, limit=1
        )
        return bool(voided)

    async def _wait(self, label_id: str, services: AccountServices) -> None:
        """Wait (at most ``wait_s``) for a label still being bought; a unit is started only
        for a ``purchasing`` label no unit in this process is driving, and drives it only if
        no other replica does — else the label's row is watched until it is bought."""
        running = self._units.get(label_id)
        if running is None or running[0].done():
            row = await self._ledger.purchase(label_id)
            if row is None or row.status != S.PURCHASING:
                return
        unit = self._unit(label_id, services)
        try:
            async with asyncio.timeout(self._timing.wait_s):
                if not await asyncio.shield(unit):  # another replica is buying it
                    await self._watch(label_id)
        except TimeoutError:
            log.info("label %s still purchasing; answering with its current state", label_id)

    async def _watch(self, label_id: str) -> None:
        """Until the label is no longer ``purchasing`` (the caller bounds the wait)."""
        pause = WATCH_S[0]
        while True:
            row = await self._ledger.purchase(label_id)
            if row is None or row.status != S.PURCHASING:
                return
            await asyncio.sleep(pause)
            pause = min(WATCH_S[1], pause * 2)

    def _unit(self, label_id: str, services: AccountServices) -> asyncio.Task[bool]:
        """The one task that buys (or resumes buying) a label in this process, if its lease
        is free (the task's result says whether it drove the label)."""
        running = self._units.get(label_id)
        if running is not None and not running[0].done():
            return running[0]
        purchase = PurchaseUnit(
            self._ledger, services, label_id, timing=self._timing,
            on_queued=self._on_queued,
        )  # fmt: skip
        unit = asyncio.create_task(purchase.run())
        self._units[label_id] = (unit, purchase)
        unit.add_done_callback(lambda done: self._unit_done(label_id, done))
        return unit

    def _unit_done(self, label_id: str, unit: asyncio.Task[bool]) -> None:
        running = self._units.get(label_id)
        if running is not None and running[0] is unit:
            del self._units[label_id]
        if not unit.cancelled() and unit.exception() is not None:
            log.error(
                "purchase of %s stopped unexpectedly; it is adopted again once its lease is free",
                label_id, exc_info=unit.exception(),
            )  # fmt: skip

    # --- life of the service -------------------------------------------------------------------

    async def start(self) -> int:
        """Adopt every purchase left unsettled (buying, or with an unknown outcome) that no
        live replica drives — with one process (SQLite) every one a previous process left —
        then keep adopting those whose replica dies; and start forgetting what is older than
        the retention period. How many were adopted now.

        Voids cut off midway are settled first — but not one another replica is running (its
        void lease is held): a replica starting during a void leaves it to its runner."""
        for prefix in (PURCHASE_LEASE, RECONCILING_LEASE, VOID_LEASE):
            await self._ledger.abandon_leases(prefix)
        await settle_interrupted_voids(self._ledger, self._on_queued, self._void_claim)
        adopted = await self._adopt()
        self._adopting = asyncio.create_task(self._keep_adopting())
        self._housekeeping = asyncio.create_task(self.retention.run())
        return adopted

    async def _adopt(self) -> int:
        """Start a unit for every unfinished purchase whose lease is free or expired (each
        unit takes the lease first: of replicas adopting together, one drives it)."""
        adopted = 0
        for row in await self._ledger.adoptable_purchases():
            services = self._accounts.get(row.account)
            running = self._units.get(row.label_id)
            if services is not None and (running is None or running[0].done()):
                self._unit(row.label_id, services)
                adopted += 1
        return adopted

    async def _keep_adopting(self) -> None:
        while True:
            await asyncio.sleep(renew_every(self._timing.lease_ttl_s))
            try:
                if adopted := await self._adopt():
                    log.info("adopted %d purchase(s) no replica was driving", adopted)
                if settled := await self._settle_cut_off_voids():
                    log.info("settled %d void(s) whose replica stopped midway", settled)
            except Exception:  # the ledger away: the next round tries again
                log.exception("looking for purchases to adopt or voids to settle failed")

    async def _settle_cut_off_voids(self) -> int:
        """Settle the voids whose lease expired: their runner died (or stopped) midway — or
        lost its lease while still voiding (its renewals failing), so only a lease expired
        longer than that void's calls to ShipStation may still run is taken (they share one
        request deadline from the void's start, which came before the lease's last renewal).
        What such a void records is fenced on its lease, so even one still running then never
        settles the label a second time."""
        deadline_s = max((s.account.request_deadline_s for s in self._accounts.values()),
                         default=0.0)  # fmt: skip
        expired = await self._ledger.expired_leases(
            VOID_LEASE, for_s=max(0.0, deadline_s - self._timing.lease_ttl_s) + 1.0
        )
        if not expired:
            return 0
        label_ids = [name.removeprefix(VOID_LEASE) for name in expired]
        return await settle_interrupted_voids(
            self._ledger, self._on_queued, self._void_claim, label_ids
        )

    async def close(self, grace_s: float = 30.0) -> None:
        """Stop: a unit waiting for ShipStation's answer to ``createlabel`` gets ``grace_s`` to
        record it; the others (between steps, or reconciling) stop at once — whatever they
        were doing is resumed from the ledger: by another replica (each unit gives its lease
        back as it stops), or at the next start."""
        for background in (self._housekeeping, self._adopting):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        calling = [task for task, unit in self._units.values() if unit.calling]
        if calling:
            await asyncio.wait(calling, timeout=grace_s)
        units = [task for task, _ in self._units.values()]
        for task in units:
            task.cancel()
        await asyncio.gather(*units, return_exceptions=True)
        try:  # each unit gave its leases back; this catches one cut off as it was taken
            for prefix in (PURCHASE_LEASE, RECONCILING_LEASE):
                await self._ledger.release_own_leases(prefix)
        except Exception as exc:
            log.warning("purchase leases not given back (%r): they expire", exc)

    # --- reading -------------------------------------------------------------------------------

    async def view(self, label_id: str, account: str) -> Label:
        row = await self._ledger.purchase(label_id)
        if row is None or row.account != account:
            raise NotFound(f"no label {label_id}")
        return label_view(row, await self._ledger.packages(label_id))

    async def pdf(self, label_id: str, account: str, n: int, *, customs: bool = False) -> bytes:
        """Package ``n``'s label PDF, or (``customs``) its customs form."""
        what = "customs form" if customs else "PDF"
        row = await self._ledger.purchase(label_id)
        if row is None or row.account != account:
            raise NotFound(f"no label {label_id}")
        package = next((p for p in await self._ledger.packages(label_id) if p.n == n), None)
        try:
            content = None if package is None else await package_pdf(
                self._ledger, package, CUSTOMS if customs else LABEL
            )  # fmt: skip
        except FileNotFoundError:
            raise NotFound(f"the {what} of label {label_id} package {n} is gone") from None
        if content is None:
            raise NotFound(f"label {label_id} has no {what} for package {n}")
        return content

    async def printable(self, label_id: str, account: str) -> bytes:
        """Every bought package's label in one PDF, in box order (see :mod:`.printing`)."""
        return await merged_label_pdf(self._ledger, label_id, account)

    async def page(
        self, account: str, *, sale_id: str | None, status: str | None, limit: int,
        cursor: str | None, search: str | None = None,
    ) -> tuple[list[Label], str | None]:  # fmt: skip
        rows = await self._ledger.purchases(
            account,
            sale_id=sale_id,
            status=status,
            after=cursor,
            limit=limit + 1,
            search=search,
        )
        shown = rows[:limit]
        packages = await self._ledger.packages_of([row.label_id for row in shown])
        labels = [label_view(row, packages[row.label_id]) for row in shown]
        return labels, rows[limit - 1].label_id if len(rows) > limit else None

    # --- the write-back, now -------------------------------------------------------------------

    async def retry_write_back(self, label_id: str, account: str) -> Label:
        """Make the label's waiting write-back (or a voided label's tracking correction) due
        now instead of after its back-off, and wake the worker. A label with nothing waiting is
        answered unchanged (a job that is running is being tried already)."""
        row = await self._ledger.purchase(label_id)
        if row is None or row.account != account:
            raise NotFound(f"no label {label_id}")
        if await self._ledger.due_now(label_id):
            log.info("write-back of %s made due now by request", label_id)
            self._on_queued()
        return await self.view(label_id, account)

    # --- voiding -------------------------------------------------------------------------------

    async def void(self, services: AccountServices, label_id: str) -> Label:
        """Void the label (see :func:`.void.void_label`), one void at a time per label across
        replicas. A void that finds another one running (here or on another replica) waits for
        it — as long as a void may take (the request deadline), plus a lease TTL for one whose
        replica died — and then runs itself: a label the first one voided is then
        ``already_voided``, as for a duplicate in one process. Still running after that:
        ``void_rejected`` (try again)."""
        wait_s = services.account.request_deadline_s + self._timing.lease_ttl_s
        try:
            async with self._void_claim(label_id, wait_s=wait_s) as lease:
                if lease is None:
                    raise VoidRejected(
                        f"label {label_id} is being voided by another request; try again shortly",
                        label_id=label_id,
                    )
                await void_label(self._ledger, services, label_id, self._on_queued, lease)
        except LeaseLost:  # its lease left to expire: the sweep settles what it left half done
            raise VoidRejected(
                f"label {label_id}: this void lost its claim on the label (the ledger could not "
                "be reached to renew it); try again — a void that went through is recognised",
                label_id=label_id,
            ) from None
        return await self.view(label_id, services.account.name)

    @contextlib.asynccontextmanager
    async def _void_claim(
        self, label_id: str, *, wait_s: float = 0.0
    ) -> AsyncIterator[Lease | None]:
        """The label's void claim for the block (its lease when taken, else None): this
        process's lock on it,
        then its void lease in the ledger, renewed while the block runs. ``wait_s``: how long to
        wait for a void running here or on another replica (0: a label being voided is not
        taken — settling leaves it to its void).

        A block that ends — or refuses, or fails upstream — having recorded what it did gives
        the lease back; one cut off (cancelled, the ledger lost, a bug) leaves it to expire, so
        the sweep of expired void leases settles what it left half done."""
        if wait_s <= 0 and label_id in self._void_locks:
            yield None
            return
        lock, users = self._void_locks.setdefault(label_id, (asyncio.Lock(), [0]))
        users[0] += 1  # holding or waiting: the lock is forgotten only when nobody is
        try:
            async with lock:
                lease = Lease(
                    self._ledger, f"{VOID_LEASE}{label_id}", ttl_s=self._timing.lease_ttl_s
                )
                if not await self._take_void_lease(lease, wait_s):
                    yield None
                    return
                recorded = False
                try:
                    yield lease
                    recorded = True
                except (RequestError, UpstreamFailure):
                    recorded = True
                    raise
                finally:
                    if recorded:
                        await lease.release()
                    else:
                        await lease.pause()
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._void_locks[label_id]

    async def _take_void_lease(self, lease: Lease, wait_s: float) -> bool:
        """Take the void lease, waiting up to ``wait_s`` while another owner holds it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        pause = WATCH_S[0]
        while not await lease.acquire():
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(pause, left))
            pause = min(WATCH_S[1], pause * 2)
        return True

    async def hold_for_voided_sale(self, account: str, sale_id: str, detail: str) -> list[str]:
        """The sale was voided in Cin7 Core: its labels bought but not yet written back go to
        ``attention`` with their write-back cancelled (in one transaction each). Their ids."""
        held = []
        for row in await self._ledger.purchases(account, sale_id=sale_id, limit=200):
            if row.status not in (S.PURCHASED, S.WRITE_BACK_FAILED):
                continue
            try:
                await self._ledger.transition(
                    row.label_id, S.ATTENTION, {S.PURCHASED, S.WRITE_BACK_FAILED},
                    fields={"detail": detail, "write_back_state": "cancelled"},
                    cancel_write_back=True,
                )  # fmt: skip
            except IllegalTransition as exc:
                log.info("not held: %s", exc)
                continue
            held.append(row.label_id)
        return held
