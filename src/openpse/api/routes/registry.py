"""The routers of every capability, collected in one place (the app includes them in order)."""

from __future__ import annotations

from typing import Any

from openpse.api.routes import balance, payments, refunds, test_helpers

ROUTERS: list[Any] = [
    payments.router,
    refunds.router,
    balance.router,
    test_helpers.router,
]
