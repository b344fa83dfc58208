"""Merchants and their access keys: create, KYC review, keys shown once, rotate, revoke."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from openpse.domain.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from openpse.domain.ids import PREFIXES, new_id
from openpse.services.context import Services
from openpse.storage.db import Tx
from openpse.storage.rows import rfc3339, row_dict
from openpse.storage.tables import access_keys, merchants

__all__ = [
    "IssuedKey",
    "approve_merchant",
    "create_access_key",
    "create_merchant",
    "get_merchant",
    "key_view",
    "list_access_keys",
    "merchant_view",
    "revoke_access_key",
    "rotate_access_key",
    "update_access_key",
]

MAX_ROTATION_OVERLAP_S = 30 * 86400
MAX_ALLOWLIST_ENTRIES = 100
KYC_STATUSES = ("pending_review", "active", "rejected", "suspended")


@dataclass(frozen=True)
class IssuedKey:
    """A key with its secret: the only moment the secret exists outside the vault."""

    key: dict[str, Any]
    secret: str


def secret_context(key_id: str) -> str:
    return f"access_key:{key_id}"


def merchant_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "merchant",
        "name": row["name"],
        "email": row["email"],
        "status": row["status"],
        "livemode": False,
        "created": rfc3339(row["created"]),
        "updated": rfc3339(row["updated"]),
        "version": row["version"],
    }


def key_view(row: dict[str, Any], now: int) -> dict[str, Any]:
    status = row["status"]
    if status == "active" and row["expires_at"] is not None and row["expires_at"] <= now:
        status = "expired"
    return {
        "id": row["id"],
        "object": "access_key",
        "livemode": bool(row["livemode"]),
        "status": status,
        "secret_hint": "..." + row["secret_hint"],
        "expires_at": rfc3339(row["expires_at"]),
        "replaced_by": row["replaced_by"],
        "ip_allowlist": list(row["ip_allowlist"] or []),
        "rate_limit_per_s": row["rate_limit_per_s"],
        "description": row["description"],
        "last_used_at": rfc3339(row["last_used_at"]),
        "created": rfc3339(row["created"]),
        "updated": rfc3339(row["updated"]),
        "version": row["version"],
    }


def normalize_allowlist(value: Any, param: str = "ip_allowlist") -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest("ip_allowlist must be a list of CIDR strings", param=param)
    if len(value) > MAX_ALLOWLIST_ENTRIES:
        raise InvalidRequest(
            f"ip_allowlist takes at most {MAX_ALLOWLIST_ENTRIES} entries", param=param
        )
    out = []
    for i, cidr in enumerate(value):
        try:
            out.append(str(ipaddress.ip_network(cidr.strip(), strict=False)))
        except ValueError:
            raise InvalidRequest(
                f"{cidr!r} is not an IP address or CIDR block (e.g. 203.0.113.7 or 203.0.113.0/24)",
                param=f"{param}[{i}]",
            ) from None
    return out


async def create_merchant(
    svc: Services, *, name: str, email: str | None = None, kyc_approved: bool = False
) -> dict[str, Any]:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidRequest("name must be 1-200 characters", param="name")
    now = svc.now()
    row = {
        "id": new_id(PREFIXES["merchant"]),
        "name": name,
        "email": email,
        "status": "active" if kyc_approved else "pending_review",
        "pricing": None,
        "sandbox_clock_offset_s": 0,
        "created": now,
        "updated": now,
        "version": 1,
    }
    async with svc.db.transaction() as tx:
        await tx.execute(insert(merchants).values(**row))
    return row


async def get_merchant(svc: Services, merchant_id: str) -> dict[str, Any]:
    async with svc.db.read() as conn:
        row = (await conn.execute(select(merchants).where(merchants.c.id == merchant_id))).first()
    if row is None:
        raise NotFound(f"no merchant {merchant_id}", param="merchant")
    return row_dict(row)


async def approve_merchant(svc: Services, merchant_id: str, *, status: str) -> dict[str, Any]:
    """Operator's KYC decision."""
    if status not in KYC_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(KYC_STATUSES)}", param="status")
    async with svc.db.transaction() as tx:
        res = await tx.execute(
            update(merchants)
            .where(merchants.c.id == merchant_id)
            .values(status=status, updated=svc.now(), version=merchants.c.version + 1)
        )
        if res.rowcount == 0:
            raise NotFound(f"no merchant {merchant_id}", param="merchant")
    return await get_merchant(svc, merchant_id)


async def create_access_key(
    svc: Services,
    merchant_id: str,
    *,
    livemode: bool,
    ip_allowlist: list[str] | None = None,
    description: str | None = None,
    rate_limit_per_s: int | None = None,
) -> IssuedKey:
    async with svc.db.transaction() as tx:
        return await _insert_key(
            svc,
            tx,
            merchant_id,
            livemode=livemode,
            ip_allowlist=ip_allowlist,
            description=description,
            rate_limit_per_s=rate_limit_per_s,
        )


async def _insert_key(
    svc: Services,
    tx: Tx,
    merchant_id: str,
    *,
    livemode: bool,
    ip_allowlist: list[str] | None,
    description: str | None,
    rate_limit_per_s: int | None,
) -> IssuedKey:
    merchant = (await tx.execute(select(merchants).where(merchants.c.id == merchant_id))).first()
    if merchant is None:
        raise NotFound(f"no merchant {merchant_id}", param="merchant")
    if livemode and merchant.status != "active":
        raise PermissionDenied(
            "live keys are issued once the merchant's KYC review is approved "
            f"(status is {merchant.status})",
            code="kyc_required",
        )
    if rate_limit_per_s is not None and rate_limit_per_s < 0:
        raise InvalidRequest("rate_limit_per_s must be >= 0", param="rate_limit_per_s")
    mode = "live" if livemode else "test"
    key_id = new_id(PREFIXES[f"access_key_{mode}"])
    secret = f"sk_{mode}_" + secrets.token_hex(16)
    now = svc.now()
    row = {
        "id": key_id,
        "merchant_id": merchant_id,
        "livemode": livemode,
        "secret_enc": svc.secrets.encrypt(secret, context=secret_context(key_id)),
        "secret_hint": secret[-4:],
        "status": "active",
        "expires_at": None,
        "replaced_by": None,
        "ip_allowlist": normalize_allowlist(ip_allowlist),
        "rate_limit_per_s": rate_limit_per_s,
        "description": description,
        "last_used_at": None,
        "revoked_at": None,
        "created": now,
        "updated": now,
        "version": 1,
    }
    await tx.execute(insert(access_keys).values(**row))
    return IssuedKey(key=key_view(row, now), secret=secret)


async def _load_key(
    tx: Tx, merchant_id: str, key_id: str, livemode: bool | None = None
) -> dict[str, Any]:
    """The merchant's key; with ``livemode`` only a key of that mode (a key in the other mode
    answers like a missing one: nothing crosses modes)."""
    stmt = select(access_keys).where(
        access_keys.c.id == key_id, access_keys.c.merchant_id == merchant_id
    )
    if livemode is not None:
        stmt = stmt.where(access_keys.c.livemode == livemode)
    row = (await tx.execute(stmt)).first()
    if row is None:
        raise NotFound(f"no access key {key_id}", param="id")
    return row_dict(row)


async def get_access_key(
    svc: Services, merchant_id: str, key_id: str, *, livemode: bool | None = None
) -> dict[str, Any]:
    async with svc.db.read() as conn:
        row = await _load_key(conn, merchant_id, key_id, livemode)
    return key_view(row, svc.now())


async def list_access_keys(
    svc: Services, merchant_id: str, *, livemode: bool | None = None
) -> list[dict[str, Any]]:
    """The merchant's keys, newest first; with ``livemode`` only the keys of that mode."""
    stmt = select(access_keys).where(access_keys.c.merchant_id == merchant_id)
    if livemode is not None:
        stmt = stmt.where(access_keys.c.livemode == livemode)
    async with svc.db.read() as conn:
        rows = (await conn.execute(stmt.order_by(access_keys.c.id.desc()))).all()
    now = svc.now()
    return [key_view(row_dict(r), now) for r in rows]


async def rotate_access_key(
    svc: Services,
    merchant_id: str,
    key_id: str,
    *,
    overlap_s: int = 86400,
    livemode: bool | None = None,
) -> IssuedKey:
    """Issue a successor; the old key stays valid for ``overlap_s`` seconds, then expires."""
    if (
        not isinstance(overlap_s, int)
        or isinstance(overlap_s, bool)
        or not (0 <= overlap_s <= MAX_ROTATION_OVERLAP_S)
    ):
        raise InvalidRequest(
            f"overlap_seconds must be an integer from 0 to {MAX_ROTATION_OVERLAP_S}",
            param="overlap_seconds",
        )
    async with svc.db.transaction() as tx:
        old = await _load_key(tx, merchant_id, key_id, livemode)
        now = svc.now()
        if old["status"] != "active" or (
            old["expires_at"] is not None and old["expires_at"] <= now
        ):
            raise Conflict(f"access key {key_id} is not active", code="key_not_active")
        if old["replaced_by"] is not None:
            raise Conflict(
                f"access key {key_id} was already rotated to {old['replaced_by']}",
                code="key_already_rotated",
            )
        issued = await _insert_key(
            svc,
            tx,
            merchant_id,
            livemode=bool(old["livemode"]),
            ip_allowlist=old["ip_allowlist"],
            description=old["description"],
            rate_limit_per_s=old["rate_limit_per_s"],
        )
        await tx.execute(
            update(access_keys)
            .where(access_keys.c.id == key_id)
            .values(
                expires_at=now + overlap_s,
                replaced_by=issued.key["id"],
                updated=now,
                version=access_keys.c.version + 1,
            )
        )
    return issued


async def revoke_access_key(
    svc: Services, merchant_id: str, key_id: str, *, livemode: bool | None = None
) -> dict[str, Any]:
    async with svc.db.transaction() as tx:
        await _load_key(tx, merchant_id, key_id, livemode)
        now = svc.now()
        await tx.execute(
            update(access_keys)
            .where(access_keys.c.id == key_id, access_keys.c.status != "revoked")
            .values(
                status="revoked", revoked_at=now, updated=now, version=access_keys.c.version + 1
            )
        )
        row = await _load_key(tx, merchant_id, key_id)
    return key_view(row, now)


async def update_access_key(
    svc: Services,
    merchant_id: str,
    key_id: str,
    *,
    ip_allowlist: list[str] | None = None,
    description: str | None = None,
    livemode: bool | None = None,
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if ip_allowlist is not None:
        values["ip_allowlist"] = normalize_allowlist(ip_allowlist)
    if description is not None:
        values["description"] = description
    async with svc.db.transaction() as tx:
        await _load_key(tx, merchant_id, key_id, livemode)
        now = svc.now()
        if values:
            await tx.execute(
                update(access_keys)
                .where(access_keys.c.id == key_id)
                .values(**values, updated=now, version=access_keys.c.version + 1)
            )
        row = await _load_key(tx, merchant_id, key_id)
    return key_view(row, now)


async def set_key_rate_limit(svc: Services, key_id: str, rate_limit_per_s: int | None) -> None:
    """Operator: give one key its own rate (None = the server default, 0 = unlimited)."""
    async with svc.db.transaction() as tx:
        await tx.execute(
            update(access_keys)
            .where(access_keys.c.id == key_id)
            .values(
                rate_limit_per_s=rate_limit_per_s,
                updated=svc.now(),
                version=access_keys.c.version + 1,
            )
        )
