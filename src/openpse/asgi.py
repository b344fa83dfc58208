"""ASGI entry point for process managers (``uvicorn --factory openpse.asgi:create``)."""

from __future__ import annotations

from typing import Any

from openpse import process_metrics
from openpse.bootstrap import build_app, settle_heap
from openpse.config import Settings


def create() -> Any:
    """The app of a process that serves only it (``openpse serve``, one per worker)."""
    process_metrics.mark_exit_at_end()
    asgi = build_app(Settings()).asgi
    settle_heap()
    return asgi
