"""``ratesvc serve --workers N``: N processes serving one port, and the parent supervising them.

Each worker is a fork of the parent taken before any event loop, thread or connection exists,
and runs the whole service on its own: its event loop (uvloop when chosen), Redis client,
ledger connections, upstream sessions and open-file limit, and a request-id key drawn again at
the fork (:mod:`ratesvc.api.middlewares`). Each listens with ``SO_REUSEPORT`` on the same
address, so the kernel spreads new connections across the workers. The parent binds the port
first (without listening) to learn it when 0 was asked for and to fail at once, with one line,
when it is taken — by another ``serve --workers`` too (:func:`reserve_port`); it keeps it while
the workers run.

The parent does nothing but supervise. SIGTERM, SIGINT or SIGHUP is forwarded to every worker
as SIGTERM: each stops gracefully (requests and purchases in progress get what is left of
``RATESVC_STOP_GRACE_S`` from the signal; one still running that plus :data:`TEARDOWN_S` later
is killed) and the parent exits 0 once all have. A worker remembers a stop signal that comes
while it starts (before its event loop listens) and stops as soon as it can. A worker that
dies without being asked (a crash, the OOM killer, a SIGKILL) makes the parent stop the others
the same way and exit non-zero: the worker's own exit status when it gave one (2: a
configuration problem found at start), else 1.

It does not restart the worker, by choice: whatever runs ``ratesvc`` (systemd, Docker or
Kubernetes) already restarts with back-off, counts restarts and alerts, and a supervisor that
quietly restarts would hide a crash loop behind the surviving workers' 200s. What the dead
worker was doing is not lost: the ledger holds it, and other replicas adopt it. A worker also
stops when the parent dies (``PR_SET_PDEATHSIG`` on Linux), so none is left holding the port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import NoReturn

log = logging.getLogger("ratesvc.supervisor")

TEARDOWN_S = 10.0  # a worker's stop after its grace: closing the ledger, Redis, sessions
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # each a graceful stop
_SIGNALS = {signal.SIGCHLD, *STOP_SIGNALS}
_PR_SET_PDEATHSIG = 1
_early_stops: list[int] = []  # stop signals that came before the event loop listened for them


def remember_stop_signals() -> None:
    """Until the event loop listens for them, a stop signal is remembered instead of killing
    the process without its grace (or, as a container's PID 1, being ignored): the loop's
    handler, once installed, stops at once (:func:`stop_signal_came`)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _remember)


def stop_signal_came() -> bool:
    return bool(_early_stops)


def _remember(signum: int, _frame: object) -> None:
    _early_stops.append(signum)


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A socket bound to ``(host, port)`` with SO_REUSEPORT, not listening, and its port: the
    workers bind the same port beside it. OSError when the port is taken.

    Linux lets any socket of the same user with SO_REUSEPORT join a port that only SO_REUSEPORT
    sockets hold — which is what a running ``serve --workers N`` holds — so a second deployment
    started on the same port by mistake would share the clients' connections without a word.
    The port is therefore first bound by a plain socket (SO_REUSEADDR, to pass over connections
    of an earlier run in TIME_WAIT, but no SO_REUSEPORT), which fails while anything listens
    there; for port 0 it also picks the port. That socket is closed and the reservation bound
    on the same port at once. In the instant between, another program could take the port: the
    reservation then fails (the port is in use), or, only if that program is another
    ``serve --workers`` binding the same port in that instant, both start — a race of two
    deliberate starts, which the first check does not claim to settle."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        address = (address[0], probe.getsockname()[1], *address[2:])
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock, int(sock.getsockname()[1])


def run_workers(count: int, serve: Callable[[int], int], *, stop_grace_s: float = 30.0) -> int:
    """Fork ``count`` workers, each running ``serve(number)`` (numbered from 1) to its exit
    status; supervise them as the module says; the parent's exit status. A worker still
    running ``stop_grace_s`` + :data:`TEARDOWN_S` after it was asked to stop is killed."""
    parent = os.getpid()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    workers: dict[int, int] = {}  # pid -> worker number
    try:
        for number in range(1, count + 1):
            pid = os.fork()
            if pid == 0:
                _worker(number, serve, parent, previous)
            workers[pid] = number
        log.info("%d workers started (pids %s)", count, ", ".join(map(str, workers)))
        return _supervise(workers, stop_grace_s + TEARDOWN_S)
    finally:
        for pid in workers:  # only when supervising failed itself: leave no worker behind
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        while signal.sigtimedwait(_SIGNALS, 0) is not None:
            pass  # a late SIGTERM is answered already: unblocked, it would kill the exit status
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker(
    number: int, serve: Callable[[int], int], parent: int, mask: set[int | signal.Signals]
) -> NoReturn:
    code = 1
    try:
        remember_stop_signals()  # before they are unblocked: a stop while starting is graceful
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _die_with(parent)
        code = serve(number)
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        elif exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # never back into the parent's code (its finally blocks, its atexit)


def _die_with(parent: int) -> None:
    """Be sent SIGTERM when the parent dies (Linux); exit now if it already has."""
    if sys.platform == "linux":
        import ctypes  # noqa: PLC0415 (Linux only)

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        raise SystemExit(1)


def _supervise(workers: dict[int, int], stop_s: float) -> int:
    """Wait for a signal or a worker's death; then stop every worker (killing those still
    running ``stop_s`` later) and report."""
    code: int | None = None  # None: no stop asked for yet
    deadline = float("inf")
    while workers:
        info = signal.sigtimedwait(_SIGNALS, min(1.0, max(0.0, deadline - time.monotonic())))
        for pid, status in _reaped(workers):
            number = workers.pop(pid)
            if code is None:
                code = _exit_code(status)
                log.error(
                    "worker %d (pid %d) %s: stopping the others; ratesvc exits %d for whatever "
                    "runs it to restart it", number, pid, _describe(status), code,
                )  # fmt: skip
                deadline = _stop(workers, stop_s)
            elif os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM):
                log.warning("worker %d (pid %d) %s while stopping", number, pid, _describe(status))
                code = code or 1
        if info is not None and info.si_signo != signal.SIGCHLD:
            if code is None:
                name = signal.Signals(info.si_signo).name
                log.info("%s: stopping %d workers", name, len(workers))
                code = 0
            deadline = min(deadline, _stop(workers, stop_s))  # a second signal: forwarded again
        if workers and time.monotonic() >= deadline:
            log.error("%d workers still running after %g s: killing them", len(workers),
                      stop_s)  # fmt: skip
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            code, deadline = code or 1, float("inf")
    return code or 0


def _reaped(workers: dict[int, int]) -> list[tuple[int, int]]:
    done = []
    for pid in list(workers):
        with contextlib.suppress(ChildProcessError):
            reaped, status = os.waitpid(pid, os.WNOHANG)
            if reaped:
                done.append((reaped, status))
    return done


def _stop(workers: dict[int, int], stop_s: float) -> float:
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return time.monotonic() + stop_s


def _exit_code(status: int) -> int:
    """A worker's own non-zero exit status, else 1 (killed by a signal, or exited 0 unasked)."""
    code = os.waitstatus_to_exitcode(status)
    return code if code > 0 else 1


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
