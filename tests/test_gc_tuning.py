"""The collector tuning ``ratesvc serve`` applies once it serves (:mod:`ratesvc.gc_tuning`)."""

from __future__ import annotations

import subprocess
import sys


def test_serving_freezes_what_is_alive_and_collects_the_young_less_often_once() -> None:
    """Run in a process of its own: freezing is for good, and this one runs every test."""
    script = (
        "import gc\n"
        "from ratesvc import gc_tuning\n"
        "before = gc.get_threshold()\n"
        "gc_tuning.tune()\n"
        "frozen = gc.get_freeze_count()\n"
        "gc_tuning.tune()\n"
        "print(before[0], gc.get_threshold()[0], frozen > 1000, gc.get_freeze_count() == frozen,"
        " gc.get_threshold()[1:] == before[1:])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip

    assert out == ["700", "10000", "True", "True", "True"]
