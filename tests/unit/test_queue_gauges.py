"""The webhook queue gauges (openpse/webhooks/metrics.py): an endpoint that left the queue's
snapshot stops showing its old depth, in one process and across processes sharing a metrics
directory (there a process's file keeps every series it wrote, so clearing alone is not
enough)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import REGISTRY

_SCRIPT = """
import sys
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from openpse.webhooks.metrics import publish_queue
from openpse.webhooks.outbox import EndpointQueue, QueueSnapshot

publish_queue(QueueSnapshot([EndpointQueue("we_a", 5, 100), EndpointQueue("we_b", 7, 90)],
                            12, 90), now_s=130)
publish_queue(QueueSnapshot([EndpointQueue("we_a", 2, None)], 2, None), now_s=140)
registry = CollectorRegistry()
MultiProcessCollector(registry)
sys.stdout.write(generate_latest(registry).decode())
"""


def _depth(text: str, endpoint: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f'openpse_webhook_queue_depth{{endpoint="{endpoint}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_an_endpoint_that_left_the_snapshot_reads_zero_across_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert _depth(out, "we_a") == 2.0
    assert _depth(out, "we_b") == 0.0  # not its last published 7
    assert "openpse_webhook_queue_depth_total 2.0" in out


def test_in_one_process_an_endpoint_that_left_the_snapshot_has_no_series() -> None:
    from openpse.webhooks.metrics import publish_queue
    from openpse.webhooks.outbox import EndpointQueue, QueueSnapshot

    publish_queue(QueueSnapshot([EndpointQueue("we_x", 5, 100), EndpointQueue("we_y", 7, 90)],
                                12, 90), now_s=130)
    publish_queue(QueueSnapshot([EndpointQueue("we_x", 2, None)], 2, None), now_s=140)
    assert REGISTRY.get_sample_value("openpse_webhook_queue_depth", {"endpoint": "we_x"}) == 2
    assert REGISTRY.get_sample_value("openpse_webhook_queue_depth", {"endpoint": "we_y"}) is None
