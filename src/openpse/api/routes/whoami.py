"""Who the caller is, as the server sees it: the key, its mode, the client address its IP
allowlist is checked against, and the server's clock. ``openpse doctor`` reads it to explain
allowlist and clock-skew failures before they happen."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from openpse.api.deps import CallerDep
from openpse.storage.rows import rfc3339

router = APIRouter(prefix="/v1", tags=["account"])


@router.get("/whoami", summary="The calling key, its mode, the client address the server sees "
                               "and the server's time")
async def whoami(request: Request, caller: CallerDep) -> Any:
    return {
        "object": "whoami",
        "access_key": caller.access_key_id,
        "merchant": caller.merchant_id,
        "livemode": caller.livemode,
        "client_ip": getattr(request.state, "client_ip", None),
        # wall-clock time, the clock request timestamps are checked against (not sandbox time)
        "server_time": rfc3339(int(time.time())),
    }
