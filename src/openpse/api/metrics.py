"""Prometheus metrics of the API: latency per route, responses per status, auth failures."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["AUTH_FAILURES", "REQUEST_LATENCY", "RESPONSES"]

LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 15.0)

REQUEST_LATENCY = Histogram(
    "openpse_http_request_duration_seconds",
    "API request latency by route template",
    ["method", "route"],
    buckets=LATENCY_BUCKETS_S,
)
RESPONSES = Counter("openpse_http_responses_total", "API responses by status code", ["status"])
AUTH_FAILURES = Counter(
    "openpse_auth_failures_total", "Rejected requests by authentication error code", ["code"]
)
