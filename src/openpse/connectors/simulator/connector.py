"""The built-in sandbox acquirer.

It behaves like another system: it keeps its own books (``simulator_operations``), written in
its own transactions, and it is idempotent by the reference we send — asking twice with the
same reference returns the first answer and charges nothing more. Tests count its rows to prove
that a crash and a retry never charged a card twice.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError

from openpse.connectors.base import AuthorizeRequest, ConnectorResult, Outcome
from openpse.connectors.simulator.transformers import authorize_outcome
from openpse.domain.ids import new_id
from openpse.storage.db import Database
from openpse.storage.direct import direct
from openpse.storage.tables import simulator_operations

__all__ = ["SimulatorConnector"]


def _to_row(result: ConnectorResult) -> dict[str, Any]:
    return {"outcome": result.outcome, "connector_reference": result.connector_reference,
            "decline_code": result.decline_code, "message": result.message,
            "action": result.action, "raw": result.raw}


def _from_row(data: dict[str, Any]) -> ConnectorResult:
    return ConnectorResult(data["outcome"], data.get("connector_reference"),
                           data.get("decline_code"), data.get("message"), data.get("action"),
                           data.get("raw") or {})


class SimulatorConnector:
    name = "simulator"

    def __init__(self, db: Database, *, clock: Any = None) -> None:
        self._db = db

    async def _once(self, reference: str, operation: str, amount: int, currency: str,
                    result: ConnectorResult) -> ConnectorResult:
        """Record ``result`` under ``reference`` unless an answer is already recorded (the
        reference's unique key decides; then the recorded answer is returned)."""
        import time

        try:
            # One INSERT, its own transaction. It stands in for the acquirer's books, in
            # another system, so OpenPSE does not wait for the disk here: the commit that
            # applies this answer (durable) follows it and makes it durable too.
            await self._db.write_async_commit((simulator_operations, {
                "reference": reference, "operation": operation, "amount": amount,
                "currency": currency, "result": _to_row(result),
                "created": int(time.time())}))
        except IntegrityError:
            again = await self.sync(reference)
            assert again is not None
            return again
        return result

    async def authorize(self, req: AuthorizeRequest) -> ConnectorResult:
        result = authorize_outcome(req, "sim_" + new_id("")[-20:])
        op = "sale" if req.capture else "authorize"
        return await self._once(req.reference, op, req.amount, req.currency, result)

    async def capture(self, reference: str, connector_reference: str, amount: int,
                      currency: str) -> ConnectorResult:
        return await self._once(reference, "capture", amount, currency,
                                ConnectorResult(Outcome.CAPTURED, connector_reference))

    async def void(self, reference: str, connector_reference: str) -> ConnectorResult:
        return await self._once(reference, "void", 0, "XXX",
                                ConnectorResult(Outcome.SUCCEEDED, connector_reference))

    async def refund(self, reference: str, connector_reference: str, amount: int,
                     currency: str) -> ConnectorResult:
        return await self._once(reference, "refund", amount, currency,
                                ConnectorResult(Outcome.SUCCEEDED, "simre_" + new_id("")[-16:]))

    async def sync(self, reference: str) -> ConnectorResult | None:
        async with self._db.read() as conn:
            row = await direct(conn).fetchone(
                "SELECT result FROM simulator_operations WHERE reference = :r",
                {"r": reference}, table=simulator_operations)
        return None if row is None else _from_row(row["result"])
