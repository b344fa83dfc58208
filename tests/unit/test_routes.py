"""Every request path belongs to at most one route, so the order routers are included in
(busiest first, ``api/app.py``) changes speed only, never which handler answers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Match

from openpse.bootstrap import build_app
from openpse.config import Settings

MASTER_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def _leaves(routes: list[Any]) -> list[Any]:
    out: list[Any] = []
    for r in routes:
        inner = getattr(r, "original_router", None)
        out += _leaves(inner.routes) if inner is not None else [r]
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data = Path(tmp_path_factory.mktemp("routes"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENPSE_DATABASE_URL", f"sqlite:///{data}/openpse.db")
        mp.setenv("OPENPSE_MASTER_KEY", MASTER_KEY)
        mp.setenv("OPENPSE_DATA_DIR", str(data))
        return build_app(Settings()).fastapi


def _example(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x_1", path)


def test_no_request_path_matches_two_routes(app: Any) -> None:
    leaves = [r for r in _leaves(app.router.routes) if hasattr(r, "path")]
    assert len(leaves) > 40  # the whole API, not an empty app
    checked = 0
    for route in leaves:
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            scope = {"type": "http", "method": method, "path": _example(route.path),
                     "root_path": "", "headers": [], "query_string": b"", "app": app}
            full = [other.path for other in leaves
                    if other.matches(dict(scope))[0] == Match.FULL]
            assert full == [route.path], (method, route.path, full)
            checked += 1
    assert checked >= len(leaves)


def test_the_busiest_routes_are_tried_first(app: Any) -> None:
    """POST /v1/payments is the first API route after the system's (/healthz, /metrics)."""
    order = [r.path for r in _leaves(app.router.routes) if hasattr(r, "path")]
    assert order.index("/v1/payments") < order.index("/v1/access_keys")
    assert order.index("/v1/payments") < order.index("/v1/account")
    assert order.index("/healthz") < order.index("/v1/payments")
