"""Operator routes (KYC decisions, key limits): a bearer token from OPENPSE_ADMIN_TOKEN.

A merchant's signed request never reaches these: without the operator token they answer 403.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header

from openpse.api.deps import ServicesDep
from openpse.api.models import Strict
from openpse.domain.errors import PermissionDenied
from openpse.services import merchants as svc_merchants
from openpse.services.context import Services


async def require_operator(
    svc: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> Services:
    token = svc.settings.admin_token.get_secret_value() if svc.settings.admin_token else None
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not token or not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise PermissionDenied(
            "operator routes need the operator's bearer token (OPENPSE_ADMIN_TOKEN); merchant "
            "access keys cannot call them", code="operator_only",
        )
    return svc


OperatorDep = Annotated[Services, Depends(require_operator)]
router = APIRouter(prefix="/operator", tags=["operator"])


class KycDecision(Strict):
    status: str


class KeyLimit(Strict):
    rate_limit_per_s: int | None


@router.post("/merchants/{merchant_id}/kyc", summary="Record a KYC decision")
async def kyc_decision(merchant_id: str, body: KycDecision, svc: OperatorDep) -> Any:
    row = await svc_merchants.approve_merchant(svc, merchant_id, status=body.status)
    return svc_merchants.merchant_view(row)


@router.post("/access_keys/{key_id}/rate_limit", summary="Give a key its own rate limit")
async def key_rate_limit(key_id: str, body: KeyLimit, svc: OperatorDep) -> Any:
    await svc_merchants.set_key_rate_limit(svc, key_id, body.rate_limit_per_s)
    return {"id": key_id, "rate_limit_per_s": body.rate_limit_per_s}


class KeyCreate(Strict):
    mode: str = "live"
    ip_allowlist: list[str] | None = None
    description: str | None = None


@router.post("/merchants/{merchant_id}/access_keys", status_code=201,
             summary="Issue a key for a merchant (the first live key comes from here)")
async def issue_key(merchant_id: str, body: KeyCreate, svc: OperatorDep) -> Any:
    if body.mode not in ("test", "live"):
        from openpse.domain.errors import InvalidRequest

        raise InvalidRequest("mode must be test or live", param="mode")
    issued = await svc_merchants.create_access_key(
        svc, merchant_id, livemode=body.mode == "live", ip_allowlist=body.ip_allowlist,
        description=body.description)
    return {**issued.key, "secret": issued.secret}
