"""Which registry ``/metrics`` shows (openpse/process_metrics.py): this process's own, or every
process's samples from the shared directory (the whole story over HTTP is in
tests/integration/test_metrics_processes.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from openpse import process_metrics


def _values(registry: CollectorRegistry) -> dict[str, float]:
    return {s.name: s.value for m in registry.collect() for s in m.samples}


def test_a_single_process_shows_the_default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(process_metrics.ENV, raising=False)
    assert not process_metrics.enabled()
    assert process_metrics.registry_to_scrape(REGISTRY) is REGISTRY


def test_an_app_with_a_registry_of_its_own_shows_it_even_with_a_shared_directory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(process_metrics.ENV, str(tmp_path))
    own = CollectorRegistry()
    Counter("openpse_test_own", "an app's own counter", registry=own).inc()
    assert process_metrics.registry_to_scrape(own) is own
    assert _values(own)["openpse_test_own_total"] == 1


def test_the_default_registry_with_a_shared_directory_reads_every_process(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # another process counts 3 into the directory, then exits (its counts stay)
    code = ("from prometheus_client import Counter; "
            "Counter('openpse_test_other', 'another process').inc(3)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**os.environ, process_metrics.ENV: str(tmp_path)})
    monkeypatch.setenv(process_metrics.ENV, str(tmp_path))
    merged = process_metrics.registry_to_scrape(REGISTRY)
    assert merged is not REGISTRY
    assert _values(merged)["openpse_test_other_total"] == 3
