"""The merchant's balance per currency: pending (captured, not settled) and available."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from openpse.api.deps import CallerDep, ServicesDep
from openpse.storage.ledger import balances_for

router = APIRouter(prefix="/v1", tags=["balance"])


@router.get("/balance", summary="Pending and available funds per currency")
async def get_balance(caller: CallerDep, svc: ServicesDep) -> Any:
    async with svc.db.read() as conn:
        bal = await balances_for(conn, caller.merchant_id, caller.livemode)
    currencies = sorted({cur for (_kind, cur) in bal})

    def amounts(kind: str) -> list[dict[str, Any]]:
        # liabilities carry credit (negative) balances; the merchant sees them as positive
        return [{"amount": -bal.get((kind, c), 0), "currency": c} for c in currencies]

    return {"object": "balance", "livemode": caller.livemode,
            "pending": amounts("merchant_pending"), "available": amounts("merchant_available")}
