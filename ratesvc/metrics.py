"""Prometheus metrics. Each app owns a registry, so several apps (tests, demo) never collide."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only add noise to every scrape

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """Every metric the service exports; names are ``ratesvc_*``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._http_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.http_requests = Counter(
            "ratesvc_http_requests",
            "HTTP requests served, by route template, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "ratesvc_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method and status.",
            ("route", "method", "status"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
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

    def http_series(self, route: str, method: str, status: int) -> tuple[Counter, Histogram]:
        """The request counter and latency histogram of one (route, method, status), cached:
        looking labels up costs more than counting."""
        if method not in _METHODS:  # any token is a method to aiohttp: keep the labels bounded
            method = "OTHER"
        key = (route, method, status)
        series = self._http_series.get(key)
        if series is None:
            labels = (route, method, str(status))
            series = self._http_series[key] = (
                self.http_requests.labels(*labels),
                self.http_latency.labels(*labels),
            )
        return series

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
