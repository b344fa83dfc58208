"""Access keys: a merchant manages its own keys (create, list, rotate with overlap, revoke).

A key sees and manages only the keys of its own mode; ``mode`` on create is how a merchant
whose KYC is approved gets its first live key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from openpse.api.deps import CallerDep, ServicesDep
from openpse.api.models import AccessKeyCreate, AccessKeyRotate, AccessKeyUpdate
from openpse.domain.errors import PermissionDenied
from openpse.services import merchants as svc_merchants

router = APIRouter(prefix="/v1/access_keys", tags=["access keys"])


def _with_secret(issued: svc_merchants.IssuedKey) -> dict[str, Any]:
    return {**issued.key, "secret": issued.secret}


@router.post("", status_code=201, summary="Create an access key (its secret is shown once)")
async def create_key(body: AccessKeyCreate, caller: CallerDep, svc: ServicesDep) -> Any:
    livemode = caller.livemode if body.mode is None else body.mode == "live"
    if livemode and not caller.livemode:
        # A leaked sandbox key must never be a way to mint live credentials.
        raise PermissionDenied(
            "a sandbox key cannot create live keys: create them with a live key, or ask the "
            "operator for the first one (openpse keys create --live)",
            code="live_key_requires_live_caller",
        )
    issued = await svc_merchants.create_access_key(
        svc, caller.merchant_id, livemode=livemode, ip_allowlist=body.ip_allowlist,
        description=body.description,
    )
    return _with_secret(issued)


@router.get("", summary="List the merchant's access keys")
async def list_keys(caller: CallerDep, svc: ServicesDep) -> Any:
    keys = await svc_merchants.list_access_keys(svc, caller.merchant_id,
                                                livemode=caller.livemode)
    return {"object": "list", "data": keys, "has_more": False, "next_cursor": None}


@router.get("/{key_id}", summary="Get an access key")
async def get_key(key_id: str, caller: CallerDep, svc: ServicesDep) -> Any:
    return await svc_merchants.get_access_key(svc, caller.merchant_id, key_id,
                                              livemode=caller.livemode)


@router.post("/{key_id}", summary="Update an access key's IP allowlist or description")
async def update_key(key_id: str, body: AccessKeyUpdate, caller: CallerDep,
                     svc: ServicesDep) -> Any:
    return await svc_merchants.update_access_key(
        svc, caller.merchant_id, key_id, ip_allowlist=body.ip_allowlist,
        description=body.description, livemode=caller.livemode,
    )


@router.post("/{key_id}/rotate", status_code=201,
             summary="Rotate: a new key now, the old one valid for overlap_seconds more")
async def rotate_key(key_id: str, body: AccessKeyRotate, caller: CallerDep,
                     svc: ServicesDep) -> Any:
    issued = await svc_merchants.rotate_access_key(
        svc, caller.merchant_id, key_id, overlap_s=body.overlap_seconds,
        livemode=caller.livemode,
    )
    return _with_secret(issued)


@router.post("/{key_id}/revoke", summary="Revoke an access key at once")
async def revoke_key(key_id: str, caller: CallerDep, svc: ServicesDep) -> Any:
    return await svc_merchants.revoke_access_key(svc, caller.merchant_id, key_id,
                                                 livemode=caller.livemode)
