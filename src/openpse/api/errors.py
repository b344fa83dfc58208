"""The one place that maps errors to HTTP.

Everything below the API raises ``openpse.domain.errors`` subclasses with a stable ``code``;
this module turns them (and framework validation errors) into the contract's error body:
``{"error": {"type", "code", "message", "param", "request_id", ...}}``.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from openpse.domain import errors as e

__all__ = ["API_ERROR_RESPONSES", "JSON_CONTENT_TYPE", "ErrorResponse", "error_body",
           "error_response", "json_bytes", "status_and_type", "validation_error"]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")  # e.g. string_to_sign, payment

    type: Literal["invalid_request_error", "authentication_error", "permission_error",
                  "idempotency_error", "rate_limit_error", "card_error", "api_error"]
    code: str
    message: str
    param: str | None
    request_id: str | None


class ErrorResponse(BaseModel):
    """The body of every non-2xx answer of the API."""

    error: ErrorDetail


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# Declared on every API route, so the OpenAPI document shows the errors the pipeline and the
# error handlers really send (and not the framework's 422, which this API never answers).
API_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _err("Invalid request: malformed JSON, unknown field, wrong type (see error.param)"),
    401: _err("Authentication failed: missing or bad signature, key, timestamp or nonce"),
    403: _err("Permission denied, e.g. ip_not_allowed or kyc_required"),
    404: _err("No such object for this key, or no such route"),
    413: _err("Request body larger than 1 MiB"),
    429: _err("Rate limited: see Retry-After and the RateLimit-* headers"),
    "default": _err("Any other error; error.type and error.code say which"),
}

_IDEMPOTENCY_STATUS = {"idempotency_key_reused": 422, "idempotency_request_in_progress": 409}


def status_and_type(err: e.DomainError) -> tuple[int, str]:
    if isinstance(err, e.NotFound):
        return 404, "invalid_request_error"
    if isinstance(err, e.InvalidRequest):
        return (413 if err.code == "body_too_large" else 400), "invalid_request_error"
    if isinstance(err, e.AuthenticationFailed):
        return 401, "authentication_error"
    if isinstance(err, e.PermissionDenied):
        return 403, "permission_error"
    if isinstance(err, e.IdempotencyFailure):
        return _IDEMPOTENCY_STATUS.get(err.code, 409), "idempotency_error"
    if isinstance(err, e.Conflict):
        return 409, "invalid_request_error"
    if isinstance(err, e.RateLimited):
        return 429, "rate_limit_error"
    if isinstance(err, e.CardDeclined):
        return 402, "card_error"
    if isinstance(err, e.AcquirerUnavailable):
        return 502, "api_error"
    return 500, "api_error"


def json_bytes(obj: Any) -> bytes:
    return orjson.dumps(obj)


def error_body(err: e.DomainError, request_id: str | None) -> tuple[int, dict[str, Any]]:
    status, typ = status_and_type(err)
    body: dict[str, Any] = {
        "type": typ,
        "code": err.code,
        "message": err.message,
        "param": err.param,
        "request_id": request_id,
    }
    body.update(err.extra)
    return status, {"error": body}


def error_response(
    err: e.DomainError, request_id: str | None, headers: dict[str, str] | None = None
) -> Response:
    status, body = error_body(err, request_id)
    hdrs = dict(headers or {})
    if isinstance(err, e.RateLimited):
        hdrs["Retry-After"] = str(err.retry_after_s)
    return Response(json_bytes(body), status_code=status, media_type=JSON_CONTENT_TYPE,
                    headers=hdrs)


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic puts the model type name for union members; drop tagged-union noise
    parts = [p for p in parts if not p.startswith(("function-", "tagged-union"))]
    if not parts:
        return None
    return parts[0] + "".join(f"[{p}]" for p in parts[1:])


_FIELD_CODES = {"amount": "invalid_amount", "currency": "invalid_currency"}


def validation_error(exc: RequestValidationError) -> e.InvalidRequest:
    """The first problem pydantic found, as a contract error with the offending ``param``."""
    errs = exc.errors()
    first = errs[0] if errs else {"type": "value_error", "loc": (), "msg": "invalid request"}
    kind = first.get("type", "")
    loc = tuple(first.get("loc", ()))
    param = _param_from_loc(loc)
    leaf = str(loc[-1]) if loc else ""
    if kind == "json_invalid":
        return e.InvalidRequest(
            "the request body is not valid JSON: " + _ctx_error(first),
            code="invalid_json",
        )
    if param is None:  # the body as a whole: absent, or not a JSON object
        return e.InvalidRequest(
            "the request body must be a JSON object (send {} when there is nothing to set), "
            "with Content-Type: application/json",
            code="parameter_missing" if kind == "missing" else "parameter_invalid",
        )
    if kind == "missing":
        return e.InvalidRequest(f"{param} is required", code="parameter_missing", param=param)
    if kind == "extra_forbidden":
        return e.InvalidRequest(
            f"{param} is not a parameter of this request (it may be read-only or misspelled)",
            code="parameter_unknown",
            param=param,
        )
    code = _FIELD_CODES.get(leaf, "parameter_invalid")
    msg = f"{param}: {first.get('msg', 'invalid value')}"
    if code == "invalid_amount":
        msg = (f"{param} must be an integer in the currency's minor unit "
               "(JPY 1000 for ¥1,000; USD 1050 for $10.50), not a float or a string")
    return e.InvalidRequest(msg, code=code, param=param)


def _ctx_error(first: Any) -> str:
    ctx = first.get("ctx")
    return str(ctx.get("error", "")) if isinstance(ctx, dict) else ""

