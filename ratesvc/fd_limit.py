"""Enough file descriptors for the ShipStation pool, or a smaller pool (said in the log).

The pool (``RATESVC_SHIPSTATION_CONNECTIONS``, 512 by default) holds one socket per connection;
the clients, the ledger, label PDFs and Cin7 Core need theirs too. A common soft limit is 1,024
open files. At start the soft limit is raised to the hard limit (at most :data:`RAISE_TO`); when
even that leaves less than the pool plus :data:`HEADROOM`, the pool is made to fit (never
below :data:`MIN_POOL`) and a warning says what to raise, so quotes wait for a connection rather
than fail for want of a descriptor.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

HEADROOM = 512  # incoming connections, the ledger, PDFs, Cin7 Core, logs
MIN_POOL = 16
RAISE_TO = 65_536  # the soft open-file limit asked for at start (the hard limit permitting)


def fitting_pool(wanted: int) -> int:
    """The ShipStation pool size to use: ``wanted`` when the descriptors allow it."""
    try:
        import resource  # noqa: PLC0415 (POSIX only)
    except ImportError:  # pragma: no cover - Windows: no such limit to manage
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + HEADROOM
    # a server's sockets are its work: take what the hard limit allows (bounded), as most
    # servers do, rather than the soft limit's 1,024 meant for interactive shells
    target = RAISE_TO if hard == resource.RLIM_INFINITY else min(hard, RAISE_TO)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit to %d: %s", target, exc)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    fitted = max(MIN_POOL, soft - HEADROOM)
    log.warning(
        "RATESVC_SHIPSTATION_CONNECTIONS=%d needs about %d open files but the limit is %d: "
        "using %d connections (raise `ulimit -n` to use them all)", wanted, needed, soft, fitted,
    )  # fmt: skip
    return min(wanted, fitted)
