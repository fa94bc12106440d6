"""Prometheus metrics. Each app owns a registry, so several apps (tests, demo) never collide."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only add noise to every scrape

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_HTTP_LABELS = ("route", "method", "status")
_HTTP_REQUESTS = (
    "ratesvc_http_requests",
    "HTTP requests served, by route template, method and status.",
)
_HTTP_LATENCY = (
    "ratesvc_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template, method and status.",
)
_LE = [*(floatToGoString(b) for b in _LATENCY_BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]


class HttpSeries:
    """One (route, method, status) of the request counter and the latency histogram: plain
    numbers added to on the event loop and read at scrape time, also on the loop. Every answer
    is counted: two prometheus_client calls (a lock each, bucket search in Python) cost the hot
    path several times more than this."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * len(_LE)  # not cumulative; the last one is +Inf

    def observe(self, seconds: float) -> None:
        """One more answer, which took ``seconds``."""
        self.count += 1
        self.total += seconds
        self.buckets[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1  # le is inclusive


class _HttpCollector:
    """Exposes the :class:`HttpSeries` as the counter and histogram they stand for, with the
    names, help, labels and buckets a prometheus_client Counter and Histogram would give."""

    def __init__(self, series: dict[tuple[str, str, int], HttpSeries]) -> None:
        self._series = series

    def describe(self) -> Sequence[Metric]:
        return [CounterMetricFamily(*_HTTP_REQUESTS, labels=_HTTP_LABELS),
                HistogramMetricFamily(*_HTTP_LATENCY, labels=_HTTP_LABELS)]  # fmt: skip

    def collect(self) -> Sequence[Metric]:
        requests = CounterMetricFamily(*_HTTP_REQUESTS, labels=_HTTP_LABELS)
        latency = HistogramMetricFamily(*_HTTP_LATENCY, labels=_HTTP_LABELS)
        for (route, method, status), series in list(self._series.items()):
            labels = (route, method, str(status))
            requests.add_metric(labels, series.count)
            cumulative = itertools.accumulate(series.buckets)
            latency.add_metric(labels, list(zip(_LE, cumulative, strict=True)), series.total)
        return [requests, latency]


class Metrics:
    """Every metric the service exports; names are ``ratesvc_*``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._http_series: dict[tuple[str, str, int], HttpSeries] = {}
        self.registry.register(_HttpCollector(self._http_series))
        self.upstream_requests = Counter(
            "ratesvc_upstream_requests",
            "Calls made to ShipStation / Cin7 Core, by endpoint and status ('error' = no answer).",
            ("upstream", "endpoint", "status"),
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "ratesvc_upstream_request_duration_seconds",
            "Time an upstream call took, by upstream and endpoint.",
            ("upstream", "endpoint"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.limiter_wait = Histogram(
            "ratesvc_limiter_wait_seconds",
            "Time a call waited for its upstream rate limiter, by limiter and priority.",
            ("limiter", "priority"),
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.limiter_rejected = Counter(
            "ratesvc_limiter_rejected",
            "Calls refused at once because the limiter could not serve them before the deadline.",
            ("limiter", "priority"),
            registry=self.registry,
        )
        self.limiter_throttled = Counter(
            "ratesvc_limiter_upstream_429",
            "429 answers received: each pauses the whole key until the window resets.",
            ("limiter",),
            registry=self.registry,
        )
        self.limiter_remaining = Gauge(
            "ratesvc_limiter_remaining",
            "Calls the limiter believes are left in the current window.",
            ("limiter",),
            registry=self.registry,
        )
        self.catalog_refreshes = Counter(
            "ratesvc_carrier_catalog_refreshes",
            "Carrier catalogue loads, by account and outcome.",
            ("account", "outcome"),
            registry=self.registry,
        )

        self.automation_received = Counter(
            "ratesvc_automation_events_received",
            "Automation events recorded, by source (webhook, poller) and event type.",
            ("source", "event_type"),
            registry=self.registry,
        )
        self.automation_deduplicated = Counter(
            "ratesvc_automation_events_deduplicated",
            "Repeated deliveries of an event already recorded (acknowledged, not processed again).",
            ("source",),
            registry=self.registry,
        )
        self.automation_finished = Counter(
            "ratesvc_automation_events_processed",
            "Automation events settled, by outcome (processed, ignored, attention).",
            ("outcome",),
            registry=self.registry,
        )
        self.automation_failed = Counter(
            "ratesvc_automation_events_failed",
            "Failed attempts at an automation event, by what follows (retry, attention).",
            ("then",),
            registry=self.registry,
        )
        self.automation_polls = Counter(
            "ratesvc_automation_polls",
            "ReadyForShipping polls, by account and outcome (ok, failed).",
            ("account", "outcome"),
            registry=self.registry,
        )
        self.automation_polled_sales = Counter(
            "ratesvc_automation_polled_sales",
            "Sales the poller listed, by account and what it did (recorded, skipped).",
            ("account", "action"),
            registry=self.registry,
        )

    def http_series(self, route: str, method: str, status: int) -> HttpSeries:
        """The request count and latency of one (route, method, status)."""
        if method not in _METHODS:  # any token is a method to aiohttp: keep the labels bounded
            method = "OTHER"
        key = (route, method, status)
        series = self._http_series.get(key)
        if series is None:
            series = self._http_series[key] = HttpSeries()
        return series

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
