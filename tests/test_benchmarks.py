"""The benchmark scripts still run end to end (tiny sizes; the figures come from full runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import (
    automation,
    budget,
    coalescing,
    cold_throughput,
    common,
    edge_cpu,
    fanout,
    memory,
    replicas,
)


@pytest.fixture(autouse=True)
def results_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    return tmp_path


async def test_coalescing_makes_one_call_per_leg(results_in: Path) -> None:
    assert await coalescing.main(requests=30, carriers=4, latency_ms=20)

    saved = json.loads((results_in / "coalescing.json").read_text())
    assert saved["calls_by_carrier"] == {c: 1 for c in common.EIGHT_CARRIERS[:4]}


async def test_budget_burst_gets_no_429(results_in: Path) -> None:
    await budget.main(shipments=25, limit=10, window_s=0.5, latency_ms=20)

    saved = json.loads((results_in / "budget.json").read_text())
    assert saved["throttled"] == 0
    assert sum(saved["served_per_window"].values()) == 25 + 3  # and the catalogue's 3 calls
    assert max(saved["served_per_window"].values()) <= 10


async def test_fanout_measures_every_carrier_count(results_in: Path) -> None:
    await fanout.main(samples=3, latency_ms=20, jitter_ms=0)

    saved = json.loads((results_in / "fanout.json").read_text())
    assert set(saved["p50_s"]) == {"1", "4", "8"}
    assert saved["sequential_p50_s"]["8"] > saved["p50_s"]["8"]


async def test_cold_throughput_measures_every_configuration(results_in: Path) -> None:
    await cold_throughput.main(quotes=6, concurrency=3, latency_ms=20, rounds=1)

    saved = json.loads((results_in / "cold_throughput.json").read_text())
    assert set(saved["results"]) == set(cold_throughput.CONFIGS)
    assert all(r["quotes_per_s"] > 0 for r in saved["results"].values())


async def test_automation_ships_every_packed_sale_once(results_in: Path) -> None:
    assert await automation.main(deliveries=20, sales=3, latency_ms=10)

    saved = json.loads((results_in / "automation.json").read_text())
    assert (saved["shipped"], saved["createlabel_calls"]) == (3, 3)
    assert saved["poller"]["shipped"] == saved["poller"]["sales"] == 1


async def test_memory_reads_the_service_rss_and_its_estimates(results_in: Path) -> None:
    await memory.main(200, connections=4, steps=2)

    saved = json.loads((results_in / "memory.json").read_text())
    assert [s["requests"] for s in saved["samples"]] == [0, 100, 200]
    last = saved["samples"][-1]
    assert 0 < last["rss_mb"] < 300
    assert last["store_answers"] == 200
    assert 0 < last["store_bytes"] <= 64 << 20
    assert 0 < last["cache_bytes"] <= 64 << 20


async def test_edge_cpu_measures_replayed_answers_of_both_servers(results_in: Path) -> None:
    assert await edge_cpu.run(requests=20, rounds=2)

    saved = json.loads((results_in / "edge_cpu.json").read_text())
    assert set(saved["min_us"]) == {"ratesvc", "bare"}
    assert all(v > 0 for v in saved["min_us"].values())
    assert saved["answer_bytes"] > 1000  # the 4-carrier answer, replayed


@pytest.mark.timeout(180)
async def test_replicas_measures_workers_the_shared_budget_and_a_kill(results_in: Path) -> None:
    await replicas.main(seconds=1, rounds=1, connections=4, quotes=6, concurrency=3,
                        latency_ms=20, shipments=30, limit=10, window_s=0.5, sales=3, kills=1,
                        writeback_wait_s=5)  # fmt: skip

    saved = json.loads((results_in / "replicas.json").read_text())
    assert set(saved["throughput"]) == set(replicas.CONFIGS)
    assert all(r["cached_rps"] > 0 and r["cold_qps"] > 0 for r in saved["throughput"].values())
    assert saved["budget"]["quoted"] == 30
    labels = saved["labels"]
    assert labels["bought"] == labels["sales"] == 3
    assert (labels["duplicates"], labels["purchases"], labels["boxes"]) == (0, 6, 6)
