"""Which connectors this server has. Routing across several comes later; today: the simulator."""

from __future__ import annotations

from typing import Any

from openpse.connectors.simulator.connector import SimulatorConnector

__all__ = ["default_connectors"]


def default_connectors(svc: Any) -> dict[str, Any]:
    return {"simulator": SimulatorConnector(svc.db)}
