"""The garbage collector, tuned for a service that runs for days (issue 12, profiled).

Python's cyclic collector runs its youngest generation every 700 net allocations of container
objects and each run walks every object still young; a cold 8-carrier quote allocates tens of
thousands (requests, answers, quote structs), so the collector ran dozens of times per quote:
about 0.7 ms of the 3.4 ms of CPU a cold quote costs here (``benchmarks.cold_throughput``;
with the tuning below, 2.7-2.9 ms, throughput +3 points, p50 -3 ms). Once the service is up:

* :func:`gc.freeze` moves everything alive then (modules, settings, the app, pools, the
  carrier catalogue) out of the collector's sight for good: it was never garbage, and a full
  collection no longer walks it;
* the youngest generation is collected every :data:`GEN0` allocations instead of 700: the
  service's garbage is almost all freed at once by reference counting (msgspec structs are
  not even tracked), so collections rarely find anything — and cycles that do form (an
  exception and its traceback) are still freed, a little later.

Only ``ratesvc serve`` and ``ratesvc demo`` (and the benchmarks, which measure what they run)
tune it: a process that creates apps again and again (the tests) must not freeze each one.
"""

from __future__ import annotations

import gc

GEN0 = 10_000


def tune() -> None:
    """Freeze what is alive now and collect the youngest generation less often; once per
    process (a benchmark starting services again and again freezes only the first)."""
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0 >= GEN0:  # tuned already
        return
    gc.freeze()
    gc.set_threshold(GEN0, gen1, gen2)
