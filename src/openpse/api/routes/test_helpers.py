"""Sandbox test helpers (404 in live mode)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from openpse.api.deps import CallerDep, ServicesDep
from openpse.api.payment_models import ThreeDSIn
from openpse.domain.errors import NotFound
from openpse.services import payments as svc_payments
from openpse.services.context import Caller

router = APIRouter(prefix="/v1/test_helpers", tags=["test helpers"])


def sandbox_only(caller: Caller) -> None:
    if caller.livemode:
        raise NotFound("test helpers exist in sandbox mode only", code="route_not_found")


@router.post("/payments/{payment_id}/complete_3ds",
             summary="Finish a 3-D Secure challenge as the shopper would")
async def complete_3ds(payment_id: str, body: ThreeDSIn, caller: CallerDep,
                       svc: ServicesDep) -> Any:
    sandbox_only(caller)
    return await svc_payments.complete_3ds(svc, caller, payment_id, body.outcome)
