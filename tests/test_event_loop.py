"""``RATESVC_EVENT_LOOP``: uvloop when installed (auto), required, or asyncio's own; anything
else is a configuration error in words."""

from __future__ import annotations

import asyncio

import pytest

from ratesvc import event_loop
from ratesvc.config import ConfigError


@pytest.mark.parametrize("value", [None, "auto", " AUTO ", "", "uvloop"])
def test_uvloop_is_chosen_when_installed(value: str | None) -> None:
    env = {} if value is None else {"RATESVC_EVENT_LOOP": value}

    assert event_loop.choose(env) == "uvloop"  # a dependency on Linux


def test_asyncio_can_be_asked_for() -> None:
    assert event_loop.choose({"RATESVC_EVENT_LOOP": "asyncio"}) == "asyncio"


def test_anything_else_is_refused_in_words() -> None:
    with pytest.raises(ConfigError, match="RATESVC_EVENT_LOOP must be one of auto, uvloop"):
        event_loop.choose({"RATESVC_EVENT_LOOP": "trio"})


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_run_runs_the_coroutine_on_the_chosen_loop(loop: str) -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    ran_on = event_loop.run(which(), loop)

    assert ran_on.startswith("uvloop") == (loop == "uvloop")
