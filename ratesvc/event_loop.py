"""Which event loop runs the service: uvloop when it is installed, else asyncio's own.

``RATESVC_EVENT_LOOP``: ``auto`` (the default: uvloop if importable), ``uvloop`` (required: an
error when it is missing) or ``asyncio``. uvloop is a dependency on Linux and macOS; it cut the
service's CPU per cold 8-carrier quote enough to move concurrent cold throughput from 80 % to
84 % of the ideal (``benchmarks/cold_throughput.py`` compares both loops in one run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from ratesvc.config import ConfigError

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


def choose(env: Mapping[str, str]) -> str:
    """``uvloop`` or ``asyncio`` for ``RATESVC_EVENT_LOOP``; ConfigError for anything else."""
    wanted = env.get("RATESVC_EVENT_LOOP", "auto").strip().lower() or "auto"
    if wanted not in CHOICES:
        raise ConfigError(
            [f"RATESVC_EVENT_LOOP must be one of {', '.join(CHOICES)}, not {wanted!r}"]
        )
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401, PLC0415 (optional: not on every platform)
    except ImportError:
        if wanted == "uvloop":
            raise ConfigError(["RATESVC_EVENT_LOOP=uvloop but uvloop is not installed"]) from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], loop: str) -> T:
    if loop == "uvloop":
        import uvloop  # noqa: PLC0415

        return uvloop.run(main)
    return asyncio.run(main)
