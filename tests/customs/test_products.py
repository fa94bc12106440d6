"""Product records for customs: each read once per request, kept briefly, bounded, shared by
concurrent readers; what Cin7 Core does not have is remembered, a failed read is not."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import cast

import pytest

from ratesvc.customs.products import ProductRecords
from ratesvc.errors import UpstreamNotFound, UpstreamUnavailable
from ratesvc.limiter import Priority
from ratesvc.sales import Product
from ratesvc.upstreams.cin7.client import Cin7Client


class FakeCin7:
    """``get_product`` as Cin7 Core answers it: a record, none, or a failure."""

    def __init__(self, *known: str, delay_s: float = 0.0) -> None:
        self.known = set(known)
        self.calls: Counter[str] = Counter()
        self.failing: set[str] = set()
        self.delay_s = delay_s

    async def get_product(
        self, product_id: str, *, deadline: float | None, priority: Priority = Priority.NORMAL
    ) -> Product | None:
        self.calls[product_id] += 1
        await asyncio.sleep(self.delay_s)
        if product_id in self.failing:
            raise UpstreamUnavailable("Cin7 Core is down", upstream="cin7")
        if product_id == "gone":
            raise UpstreamNotFound("no such product", upstream="cin7")
        if product_id not in self.known:
            return None
        return Product(
            product_id=product_id, sku=product_id.upper(), weight=None, weight_unit=None,
            sides=None, length_unit=None, hs_code="0902.10",
        )  # fmt: skip


def records(cin7: FakeCin7, **kwargs: float) -> ProductRecords:
    return ProductRecords(cast(Cin7Client, cin7), **kwargs)


async def test_each_product_is_read_once_however_often_a_request_names_it() -> None:
    cin7 = FakeCin7("tea", "mug")

    found = await records(cin7).read(["tea", "mug", "tea", "tea"], deadline=None)

    assert sorted(found) == ["mug", "tea"]
    assert cin7.calls == {"tea": 1, "mug": 1}


async def test_a_second_request_within_the_ttl_reads_nothing() -> None:
    cin7 = FakeCin7("tea")
    kept = records(cin7, ttl_s=60)

    await kept.read(["tea"], deadline=None)
    again = await kept.read(["tea"], deadline=None)

    assert again["tea"].hs_code == "0902.10"
    assert cin7.calls["tea"] == 1


async def test_after_the_ttl_a_product_is_read_again() -> None:
    cin7 = FakeCin7("tea")
    kept = records(cin7, ttl_s=0)

    await kept.read(["tea"], deadline=None)
    await kept.read(["tea"], deadline=None)

    assert cin7.calls["tea"] == 2


async def test_concurrent_requests_share_one_read() -> None:
    cin7 = FakeCin7("tea", delay_s=0.05)
    kept = records(cin7)

    answers = await asyncio.gather(*(kept.read(["tea"], deadline=None) for _ in range(10)))

    assert all("tea" in found for found in answers)
    assert cin7.calls["tea"] == 1


async def test_a_missing_product_is_left_out_and_remembered() -> None:
    cin7 = FakeCin7("tea")
    kept = records(cin7)

    first = await kept.read(["tea", "ghost", "gone"], deadline=None)
    await kept.read(["ghost", "gone"], deadline=None)

    assert list(first) == ["tea"]
    assert cin7.calls == {"tea": 1, "ghost": 1, "gone": 1}


async def test_a_failed_read_is_raised_and_not_remembered() -> None:
    cin7 = FakeCin7("tea")
    cin7.failing.add("tea")
    kept = records(cin7)

    with pytest.raises(UpstreamUnavailable):
        await kept.read(["tea"], deadline=None)
    cin7.failing.clear()
    found = await kept.read(["tea"], deadline=None)

    assert "tea" in found
    assert cin7.calls["tea"] == 2


async def test_one_reader_cancelled_does_not_cancel_the_others_read() -> None:
    cin7 = FakeCin7("tea", delay_s=0.05)
    kept = records(cin7)

    impatient = asyncio.create_task(kept.read(["tea"], deadline=None))
    patient = asyncio.create_task(kept.read(["tea"], deadline=None))
    await asyncio.sleep(0.01)
    impatient.cancel()

    assert "tea" in await patient
    assert cin7.calls["tea"] == 1


async def test_at_most_max_entries_are_kept_oldest_used_dropped_first() -> None:
    cin7 = FakeCin7("a", "b", "c")
    kept = records(cin7, max_entries=2)

    await kept.read(["a"], deadline=None)
    await kept.read(["b"], deadline=None)
    await kept.read(["a"], deadline=None)  # a is used again: b is now the oldest
    await kept.read(["c"], deadline=None)
    await kept.read(["a"], deadline=None)
    await kept.read(["b"], deadline=None)

    assert len(kept) == 2
    assert cin7.calls == {"a": 1, "b": 2, "c": 1}
