"""Prometheus metrics of webhook delivery (the worker updates them; ``/metrics`` shows them).

- ``openpse_webhook_deliveries_total{outcome}``: finished attempts by what they led to:
  ``succeeded``, ``retry_scheduled``, ``failed`` (no tries left), ``endpoint_gone`` (410).
- ``openpse_webhook_attempt_duration_seconds``: one attempt, resolution to capped body read.
- ``openpse_webhook_delivery_lag_seconds``: from the event's commit to the 2xx that ended its
  delivery (whole seconds, the outbox's clock), retries included.
- ``openpse_webhook_queue_depth{endpoint}`` / ``openpse_webhook_oldest_due_age_seconds{endpoint}``:
  pending deliveries, and how long the longest-waiting due one has waited, for the
  ``MAX_ENDPOINT_SERIES`` deepest queues; ``..._total`` / ``..._max`` over all endpoints.

Across processes (``PROMETHEUS_MULTIPROC_DIR``, openpse/process_metrics.py) the queue gauges
show the most recent value any live process published: each publishes the same snapshot of
the database. An endpoint that left the snapshot is set to 0 there (a process's file keeps
every series it ever wrote, so clearing alone would leave its last depth behind).
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

from openpse import process_metrics
from openpse.webhooks.outbox import QueueSnapshot

__all__ = [
    "ATTEMPT_DURATION",
    "DELIVERY_LAG",
    "MAX_ENDPOINT_SERIES",
    "OLDEST_DUE_AGE",
    "OLDEST_DUE_AGE_MAX",
    "OUTCOMES",
    "QUEUE_DEPTH",
    "QUEUE_DEPTH_TOTAL",
    "publish_queue",
]

# Per-endpoint series are bounded: a label per endpoint of every merchant would not be.
MAX_ENDPOINT_SERIES = 100
ATTEMPT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
LAG_BUCKETS_S = (1, 2, 5, 10, 30, 60, 300, 1800, 7200, 86400, 5 * 86400)

OUTCOMES = Counter(
    "openpse_webhook_deliveries", "Finished webhook delivery attempts by outcome", ["outcome"]
)
ATTEMPT_DURATION = Histogram(
    "openpse_webhook_attempt_duration_seconds",
    "One webhook delivery attempt, from resolution to the capped response read",
    buckets=ATTEMPT_BUCKETS_S,
)
DELIVERY_LAG = Histogram(
    "openpse_webhook_delivery_lag_seconds",
    "From an event's commit to the 2xx that delivered it (retries included)",
    buckets=LAG_BUCKETS_S,
)
# how processes' values of a snapshot gauge combine
_SNAPSHOT: Literal["livemostrecent"] = "livemostrecent"
QUEUE_DEPTH = Gauge(
    "openpse_webhook_queue_depth", "Pending webhook deliveries of an endpoint", ["endpoint"],
    multiprocess_mode=_SNAPSHOT,
)
OLDEST_DUE_AGE = Gauge(
    "openpse_webhook_oldest_due_age_seconds",
    "How long an endpoint's longest-waiting due delivery has been due",
    ["endpoint"], multiprocess_mode=_SNAPSHOT,
)
QUEUE_DEPTH_TOTAL = Gauge("openpse_webhook_queue_depth_total", "Pending webhook deliveries",
                          multiprocess_mode=_SNAPSHOT)
OLDEST_DUE_AGE_MAX = Gauge(
    "openpse_webhook_oldest_due_age_seconds_max",
    "How long the longest-waiting due webhook delivery has been due",
    multiprocess_mode=_SNAPSHOT,
)
_published: set[str] = set()  # endpoints this process has a series for


def publish_queue(snapshot: QueueSnapshot, *, now_s: int) -> None:
    """Replace the queue gauges (endpoints no longer in ``snapshot`` drop their series; across
    processes they read 0)."""
    current = {q.endpoint_id for q in snapshot.endpoints}
    if process_metrics.enabled():
        for gone in _published - current:
            QUEUE_DEPTH.labels(gone).set(0)
            OLDEST_DUE_AGE.labels(gone).set(0)
    _published.clear()
    _published.update(current)
    QUEUE_DEPTH.clear()
    OLDEST_DUE_AGE.clear()
    for q in snapshot.endpoints:
        QUEUE_DEPTH.labels(q.endpoint_id).set(q.depth)
        age = 0 if q.oldest_due_at is None else max(0, now_s - q.oldest_due_at)
        OLDEST_DUE_AGE.labels(q.endpoint_id).set(age)
    QUEUE_DEPTH_TOTAL.set(snapshot.total_depth)
    oldest = snapshot.oldest_due_at
    OLDEST_DUE_AGE_MAX.set(0 if oldest is None else max(0, now_s - oldest))
