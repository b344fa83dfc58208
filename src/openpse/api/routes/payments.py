"""Payments: create, confirm, capture, cancel, get, list."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from openpse.api.deps import CallerDep, ListParamsDep, ServicesDep
from openpse.api.errors import JSON_CONTENT_TYPE, json_bytes
from openpse.api.payment_models import CancelIn, CaptureIn, ConfirmIn, PaymentCreate
from openpse.services import payments as svc_payments
from openpse.services.views import payment_view
from openpse.storage.repos import list_page
from openpse.storage.rows import page_result
from openpse.storage.tables import payments

router = APIRouter(prefix="/v1/payments", tags=["payments"])

DECLINE: dict[int | str, dict[str, Any]] = {
    402: {"description": "card_error: declined; error.payment holds the failed payment"}
}
STATE: dict[int | str, dict[str, Any]] = {409: {"description": "payment_invalid_state"}}


def _card(pm: Any) -> svc_payments.CardInput | None:
    if pm is None or pm.card is None:
        return None
    c = pm.card
    return svc_payments.CardInput(c.number, c.exp_month, c.exp_year, c.cvc, c.holder_name)


def _pm_dict(pm: Any) -> dict[str, Any] | None:
    if pm is None:
        return None
    d: dict[str, Any] = pm.model_dump(exclude_none=True, exclude={"card"})
    return d


@router.post("", status_code=201, summary="Create (and optionally confirm) a payment",
             responses=DECLINE)
async def create_payment(body: PaymentCreate, caller: CallerDep, svc: ServicesDep) -> Response:
    params = body.model_dump(exclude={"payment_method"}, exclude_none=True)
    params["payment_method"] = _pm_dict(body.payment_method)
    view, status = await svc_payments.create_payment(svc, caller, params,
                                                     _card(body.payment_method))
    return Response(json_bytes(view), status_code=status, media_type=JSON_CONTENT_TYPE)


@router.get("", summary="List payments, newest first")
async def list_payments(
    caller: CallerDep, svc: ServicesDep, page: ListParamsDep,
    status: Annotated[str | None, Query(max_length=32)] = None,
    merchant_order_id: Annotated[str | None, Query(max_length=255)] = None,
) -> Any:
    async with svc.db.read() as conn:
        rows = [payment_view(r) for r in await list_page(
            conn, payments, merchant_id=caller.merchant_id, livemode=caller.livemode,
            equal={"status": status or None, "merchant_order_id": merchant_order_id},
            **page.kwargs())]
    return page_result(rows, page.limit)


@router.get("/{payment_id}", summary="Get a payment")
async def get_payment(payment_id: str, caller: CallerDep, svc: ServicesDep) -> Any:
    return await svc_payments.get_payment(svc, caller, payment_id)


@router.post("/{payment_id}/confirm", summary="Confirm a payment", responses={**DECLINE, **STATE})
async def confirm_payment(payment_id: str, body: ConfirmIn, caller: CallerDep,
                          svc: ServicesDep) -> Any:
    return await svc_payments.confirm_payment(
        svc, caller, payment_id, payment_method=_pm_dict(body.payment_method),
        card=_card(body.payment_method), return_url=body.return_url)


@router.post("/{payment_id}/capture", summary="Capture an authorized payment (all or part)",
             responses=STATE)
async def capture_payment(payment_id: str, body: CaptureIn, caller: CallerDep,
                          svc: ServicesDep) -> Any:
    return await svc_payments.capture_payment(svc, caller, payment_id, body.amount)


@router.post("/{payment_id}/cancel", summary="Cancel a payment before it succeeds",
             responses=STATE)
async def cancel_payment(payment_id: str, body: CancelIn, caller: CallerDep,
                         svc: ServicesDep) -> Any:
    return await svc_payments.cancel_payment(svc, caller, payment_id, body.cancellation_reason)
