"""Refunds: create, get, list."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from openpse.api.deps import CallerDep, ListParamsDep, ServicesDep
from openpse.api.payment_models import RefundCreate
from openpse.services import refunds as svc_refunds

router = APIRouter(prefix="/v1/refunds", tags=["refunds"])


@router.post("", status_code=201, summary="Refund a payment (all that is left by default)")
async def create_refund(body: RefundCreate, caller: CallerDep, svc: ServicesDep) -> Any:
    return await svc_refunds.create_refund(svc, caller, body.payment, body.amount, body.reason,
                                           body.metadata, destination=body.destination,
                                           source=body.source)


@router.get("", summary="List refunds, newest first")
async def list_refunds(
    caller: CallerDep, svc: ServicesDep, page: ListParamsDep,
    payment: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
) -> Any:
    return await svc_refunds.list_refunds(svc, caller, payment=payment, status=status,
                                          **page.kwargs())


@router.get("/{refund_id}", summary="Get a refund")
async def get_refund(refund_id: str, caller: CallerDep, svc: ServicesDep) -> Any:
    return await svc_refunds.get_refund(svc, caller, refund_id)
