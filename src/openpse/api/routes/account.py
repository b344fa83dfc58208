"""The calling merchant's account and its redacted request log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from openpse.api.deps import CallerDep, ListParamsDep, ServicesDep
from openpse.services import merchants as svc_merchants
from openpse.storage.repos import list_page
from openpse.storage.rows import page_result, rfc3339
from openpse.storage.tables import request_logs

router = APIRouter(prefix="/v1", tags=["account"])


@router.get("/account", summary="The calling merchant")
async def get_account(caller: CallerDep, svc: ServicesDep) -> Any:
    view = svc_merchants.merchant_view(await svc_merchants.get_merchant(svc, caller.merchant_id))
    return {**view, "livemode": caller.livemode}


def _log_view(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "object": "request_log", "livemode": bool(row["livemode"]),
            "created": rfc3339(row["created"])}


@router.get("/request_logs", summary="The merchant's request log, newest first (redacted)")
async def list_request_logs(
    caller: CallerDep, svc: ServicesDep, page: ListParamsDep,
    status: Annotated[int | None, Query(ge=100, le=599)] = None,
) -> Any:
    async with svc.db.read() as conn:
        rows = [_log_view(r) for r in await list_page(
            conn, request_logs, merchant_id=caller.merchant_id, livemode=caller.livemode,
            equal={"status": status}, **page.kwargs())]
    return page_result(rows, page.limit)
