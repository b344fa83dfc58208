"""Sandbox test helpers (404 in live mode): the shopper's and the networks' side of a payment,
and the merchant's test clock."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from openpse.api.deps import CallerDep, ServicesDep
from openpse.api.models import Strict
from openpse.api.payment_models import (
    ClockAdvanceIn,
    DebitFailIn,
    FundIn,
    PayVoucherIn,
    RefundCompleteIn,
    ThreeDSIn,
)
from openpse.domain.errors import NotFound
from openpse.services import clock as svc_clock
from openpse.services import local_payments as svc_local
from openpse.services import payments as svc_payments
from openpse.services import refunds as svc_refunds
from openpse.services.context import Caller

router = APIRouter(prefix="/v1/test_helpers", tags=["test helpers"])

LATE: dict[int | str, dict[str, Any]] = {409: {"description": (
    "payment_expired / payment_invalid_state: the payment cannot take it; money that arrived "
    "is held as unapplied funds and recorded for review (error.review_item)")}}


class EmptyIn(Strict):
    pass


def sandbox_only(caller: Caller) -> None:
    if caller.livemode:
        raise NotFound("test helpers exist in sandbox mode only", code="route_not_found")


@router.post("/payments/{payment_id}/complete_3ds",
             summary="Finish a 3-D Secure challenge as the shopper would")
async def complete_3ds(payment_id: str, body: ThreeDSIn, caller: CallerDep,
                       svc: ServicesDep) -> Any:
    sandbox_only(caller)
    return await svc_payments.complete_3ds(svc, caller, payment_id, body.outcome)


@router.post("/payments/{payment_id}/pay_voucher", responses=LATE,
             summary="Pay a konbini, Pay-easy or boleto voucher in full, as the shopper would")
async def pay_voucher(payment_id: str, body: PayVoucherIn, caller: CallerDep,
                      svc: ServicesDep) -> Any:
    sandbox_only(caller)
    return await svc_local.pay_voucher(svc, caller, payment_id, body.store)


@router.post("/payments/{payment_id}/fund", responses=LATE,
             summary="Transfer money to a bank transfer payment's virtual account")
async def fund(payment_id: str, body: FundIn, caller: CallerDep, svc: ServicesDep) -> Any:
    sandbox_only(caller)
    return await svc_local.fund_transfer(svc, caller, payment_id, body.amount)


@router.post("/payments/{payment_id}/settle",
             summary="The shopper's bank confirms a SEPA debit (processing -> succeeded)")
async def settle(payment_id: str, body: EmptyIn, caller: CallerDep, svc: ServicesDep) -> Any:
    sandbox_only(caller)
    return await svc_local.settle_debit(svc, caller, payment_id)


@router.post("/payments/{payment_id}/fail",
             summary="The shopper's bank returns a SEPA debit (processing -> failed)")
async def fail(payment_id: str, body: DebitFailIn, caller: CallerDep, svc: ServicesDep) -> Any:
    sandbox_only(caller)
    return await svc_local.fail_debit(svc, caller, payment_id, body.failure_code)


@router.post("/refunds/{refund_id}/complete",
             summary="Pay out (or bounce) a pending refund by bank transfer")
async def complete_refund(refund_id: str, body: RefundCompleteIn, caller: CallerDep,
                          svc: ServicesDep) -> Any:
    sandbox_only(caller)
    return await svc_refunds.complete_bank_refund(svc, caller, refund_id, body.outcome)


@router.get("/clock", summary="The merchant's test clock")
async def get_clock(caller: CallerDep, svc: ServicesDep) -> Any:
    sandbox_only(caller)
    return await svc_clock.get_clock(svc, caller)


@router.post("/clock/advance",
             summary="Move the merchant's sandbox time forward (expiries, windows, settlement)")
async def advance_clock(body: ClockAdvanceIn, caller: CallerDep, svc: ServicesDep) -> Any:
    sandbox_only(caller)
    return await svc_clock.advance_clock(svc, caller, body.seconds)
