"""Checkout sessions: create, get, list, expire. The hosted page itself is ``openpse.pages``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from openpse.api.checkout_models import CheckoutSessionCreate
from openpse.api.deps import CallerDep, ListParamsDep, ServicesDep
from openpse.api.errors import JSON_CONTENT_TYPE, json_bytes
from openpse.services import checkout as svc_checkout

router = APIRouter(prefix="/v1/checkout/sessions", tags=["checkout sessions"])

STATE: dict[int | str, dict[str, Any]] = {
    409: {"description": "session_invalid_state: the session is not open"}}


@router.post("", status_code=201, summary="Create a checkout session (a hosted payment page)")
async def create_session(body: CheckoutSessionCreate, caller: CallerDep,
                         svc: ServicesDep) -> Response:
    view = await svc_checkout.create_session(svc, caller, body.model_dump(exclude_none=True))
    return Response(json_bytes(view), status_code=201, media_type=JSON_CONTENT_TYPE)


@router.get("", summary="List checkout sessions, newest first")
async def list_sessions(
    caller: CallerDep, svc: ServicesDep, page: ListParamsDep,
    status: Annotated[str | None, Query(max_length=16, description="open|complete|expired")]
    = None,
    merchant_order_id: Annotated[str | None, Query(max_length=255)] = None,
) -> Any:
    return await svc_checkout.list_sessions(svc, caller, status=status,
                                            merchant_order_id=merchant_order_id, **page.kwargs())


@router.get("/{session_id}", summary="Get a checkout session")
async def get_session(session_id: str, caller: CallerDep, svc: ServicesDep) -> Any:
    return await svc_checkout.get_session(svc, caller, session_id)


@router.post("/{session_id}/expire", summary="Expire an open checkout session",
             responses=STATE)
async def expire_session(session_id: str, caller: CallerDep, svc: ServicesDep) -> Any:
    return await svc_checkout.expire_session(svc, caller, session_id)
