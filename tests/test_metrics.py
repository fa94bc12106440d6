"""The HTTP series are plain numbers exposed by a collector: what /metrics shows of them must be
exactly what prometheus_client's Counter and Histogram would show."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ratesvc.metrics import _LATENCY_BUCKETS, Metrics

OBSERVED = [
    ("/v1/rates", "POST", 200, 0.0001), ("/v1/rates", "POST", 200, 0.005),  # le is inclusive
    ("/v1/rates", "POST", 200, 0.0051), ("/v1/carriers", "GET", 401, 30.0),
    ("/v1/carriers", "GET", 401, 31.0), ("unmatched", "PROPFIND", 405, 0.3),
    ("/v1/rates", "POST", 422, 1.0),
]  # fmt: skip


def _http_lines(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "ratesvc_http_" in line]


def test_the_http_series_expose_as_a_prometheus_counter_and_histogram_would() -> None:
    metrics = Metrics()
    reference = CollectorRegistry(auto_describe=True)
    labels = ("route", "method", "status")
    count = Counter("ratesvc_http_requests",
                    "HTTP requests served, by route template, method and status.",
                    labels, registry=reference)  # fmt: skip
    latency = Histogram("ratesvc_http_request_duration_seconds",
                        "Time to answer an HTTP request, by route template, method and status.",
                        labels, buckets=_LATENCY_BUCKETS, registry=reference)  # fmt: skip
    for route, method, status, seconds in OBSERVED:
        metrics.http_series(route, method, status).observe(seconds)
        shown = "OTHER" if method == "PROPFIND" else method
        count.labels(route, shown, str(status)).inc()
        latency.labels(route, shown, str(status)).observe(seconds)

    ours = _http_lines(metrics.exposition())
    assert ours == _http_lines(generate_latest(reference))
    assert 'ratesvc_http_requests_total{method="GET",route="/v1/carriers",status="401"} 2.0' in ours


def test_no_http_series_yet_still_shows_help_and_type() -> None:
    assert _http_lines(Metrics().exposition()) == [
        "# HELP ratesvc_http_requests_total HTTP requests served, by route template, method and "
        "status.",
        "# TYPE ratesvc_http_requests_total counter",
        "# HELP ratesvc_http_request_duration_seconds Time to answer an HTTP request, by route "
        "template, method and status.",
        "# TYPE ratesvc_http_request_duration_seconds histogram",
    ]
