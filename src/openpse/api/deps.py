"""Typed dependencies for the routes: the caller and the service container."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.security import APIKeyHeader

from openpse.api.auth import AuthContext
from openpse.domain.errors import AuthenticationFailed, InvalidRequest
from openpse.services.context import Caller, Services

__all__ = ["CallerDep", "ListParams", "ListParamsDep", "ServicesDep"]

MAX_UNIX_TIME_DIGITS = 12  # longer numbers overflow the database's 64-bit integers

# Declared so the OpenAPI document shows the signing headers; the pipeline enforces them.
_access_key = APIKeyHeader(name="X-PSE-Access-Key", auto_error=False,
                           description="Access key id; every /v1 request is HMAC-signed "
                                       "(X-PSE-Timestamp, X-PSE-Nonce, X-PSE-Signature)")


async def get_services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def get_caller(request: Request, _key: str | None = Depends(_access_key)) -> Caller:
    auth: AuthContext | None = getattr(request.state, "auth", None)
    if auth is None:  # the pipeline authenticates every /v1 route; this is a safety net
        raise AuthenticationFailed("request is not authenticated", code="missing_signature")
    claim = getattr(request.state, "idempotency", None)
    return Caller(
        merchant_id=auth.merchant_id,
        livemode=auth.livemode,
        request_id=request.state.request_id,
        idempotency_key=request.headers.get("idempotency-key"),
        access_key_id=auth.access_key_id,
        resume_resource_id=claim.resource_id if claim else None,
        idempotency_ref=claim,
        base_url=str(request.base_url).rstrip("/"),
        respond=getattr(request.state, "idempotency_respond", None),
        merchant_terms=auth.merchant_terms,
    )


ServicesDep = Annotated[Services, Depends(get_services)]
CallerDep = Annotated[Caller, Depends(get_caller)]


def _parse_time(value: str | None, param: str) -> int | None:
    if value is None:
        return None
    from datetime import datetime

    if value.isascii() and value.isdigit() and len(value) <= MAX_UNIX_TIME_DIGITS:
        return int(value)
    try:
        if not value.endswith("Z"):
            raise ValueError
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise InvalidRequest(
            f"{param} must be an RFC 3339 UTC time such as 2026-11-22T01:02:03Z (or Unix seconds)",
            param=param,
        ) from None


class ListParams:
    def __init__(
        self, limit: int, cursor: str | None, created_gte: str | None, created_lt: str | None
    ) -> None:
        self.limit = limit
        self.cursor = cursor
        self.created_gte = _parse_time(created_gte, "created_gte")
        self.created_lt = _parse_time(created_lt, "created_lt")

    def kwargs(self) -> dict[str, Any]:
        return {"limit": self.limit, "cursor": self.cursor, "created_gte": self.created_gte,
                "created_lt": self.created_lt}


async def list_params(
    limit: Annotated[int, Query(ge=1, le=100, description="1-100, default 20")] = 20,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    created_gte: Annotated[str | None, Query(description="RFC 3339 UTC, inclusive")] = None,
    created_lt: Annotated[str | None, Query(description="RFC 3339 UTC, exclusive")] = None,
) -> ListParams:
    """Async, so FastAPI does not hop to its thread pool for every list request."""
    return ListParams(limit, cursor, created_gte, created_lt)


ListParamsDep = Annotated[ListParams, Depends(list_params)]
