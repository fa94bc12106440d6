"""The ShipStation pool and the open-file limit: the soft limit is raised to the hard one; a pool
the hard limit cannot hold is made to fit, in words in the log."""

from __future__ import annotations

import logging
import resource

import pytest

from ratesvc.fd_limit import HEADROOM, MIN_POOL, RAISE_TO, fitting_pool


class Limits:
    def __init__(self, soft: int, hard: int, *, may_raise: bool = True) -> None:
        self.soft, self.hard, self.may_raise = soft, hard, may_raise

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def set(self, which: int, limits: tuple[int, int]) -> None:
        if not self.may_raise:
            raise ValueError("not allowed")
        self.soft, self.hard = limits


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Limits:
    fake = Limits(1024, 1024)
    monkeypatch.setattr(resource, "getrlimit", fake.get)
    monkeypatch.setattr(resource, "setrlimit", fake.set)
    return fake


def test_the_soft_limit_is_raised_to_the_hard_one_and_the_pool_kept(limits: Limits) -> None:
    limits.soft, limits.hard = 1024, 1_048_576

    assert fitting_pool(512) == 512
    assert limits.soft == RAISE_TO


def test_a_hard_limit_too_low_for_the_pool_shrinks_it_and_says_so(
    limits: Limits, caplog: pytest.LogCaptureFixture
) -> None:
    limits.soft, limits.hard = 256, 800

    with caplog.at_level(logging.WARNING):
        pool = fitting_pool(512)

    assert pool == 800 - HEADROOM
    assert "raise `ulimit -n`" in caplog.text


def test_the_pool_never_shrinks_below_its_minimum(limits: Limits) -> None:
    limits.soft, limits.hard, limits.may_raise = 256, 256, False

    assert fitting_pool(512) == MIN_POOL
