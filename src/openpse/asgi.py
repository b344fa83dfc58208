"""ASGI entry point for process managers (``uvicorn --factory openpse.asgi:create``)."""

from __future__ import annotations

from typing import Any

from openpse.bootstrap import build_app
from openpse.config import Settings


def create() -> Any:
    return build_app(Settings()).asgi
