"""The ASGI application: routers collected in one place, errors mapped in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import REGISTRY, CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from openpse.api.errors import (
    API_ERROR_RESPONSES,
    JSON_CONTENT_TYPE,
    error_response,
    json_bytes,
    validation_error,
)
from openpse.api.pipeline import Pipeline, PipelineConfig
from openpse.api.routes import access_keys, account, operator, system
from openpse.domain import errors as e
from openpse.services.context import Services

__all__ = ["create_app"]


class _ORJSON(JSONResponse):  # a JSONResponse, so the OpenAPI document says JSON, not "string"
    media_type = JSON_CONTENT_TYPE

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


API_VERSION = "2026-11-01"
API_ROUTERS: list[Any] = [account.router, access_keys.router, operator.router]


def _rid(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def create_app(
    services: Services,
    pipeline: PipelineConfig,
    *,
    extra_routers: list[Any] | None = None,
    on_startup: list[Callable[[], Any]] | None = None,
    on_shutdown: list[Callable[[], Any]] | None = None,
    metrics_registry: CollectorRegistry = REGISTRY,
) -> Any:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        pipeline.request_log.start()
        for fn in on_startup or []:
            await fn()
        try:
            yield
        finally:
            for fn in on_shutdown or []:
                await fn()
            await pipeline.request_log.stop()

    app = FastAPI(
        title="OpenPSE API",
        version=API_VERSION,
        description="Merchant API of OpenPSE. Every /v1 request is signed (HMAC-SHA256); see "
                    "docs/api.md for the signing recipe, idempotency and errors.",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        default_response_class=_ORJSON,
    )
    app.state.services = services
    app.state.metrics_registry = metrics_registry

    @app.exception_handler(e.DomainError)
    async def _domain(request: Request, exc: e.DomainError) -> Response:
        return error_response(exc, _rid(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(validation_error(exc), _rid(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            err: e.DomainError = e.NotFound(
                f"no route {request.method} {request.url.path}; see /openapi.json",
                code="route_not_found")
        elif exc.status_code == 405:
            err = e.InvalidRequest(
                f"{request.method} is not allowed on {request.url.path}",
                code="method_not_allowed")
            resp = error_response(err, _rid(request))
            resp.status_code = 405
            return resp
        elif exc.status_code == 400:  # the framework could not decode the body at all
            err = e.InvalidRequest(
                "the request body could not be parsed as JSON (it may be nested too deeply); "
                "send a JSON object", code="invalid_json")
        else:
            err = e.InvalidRequest(str(exc.detail), code="http_error")
        return error_response(err, _rid(request))

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, _exc: Exception) -> Response:
        body = {"error": {"type": "api_error", "code": "internal_error",
                          "message": "an internal error occurred; retrying with the same "
                                     "Idempotency-Key is safe", "param": None,
                          "request_id": _rid(request)}}
        return Response(json_bytes(body), status_code=500, media_type=JSON_CONTENT_TYPE)

    # Routes are tried in order, and passing one of FastAPI's included routers costs 5-25 µs
    # (0.165: a POST /v1/payments was routed past 7 of them, ≈ 90 µs): the capabilities'
    # routers (payments first) before the account's and the operator's. No path belongs to two
    # routes (tests/unit/test_routes.py), so the order changes speed only (and the order of
    # /openapi.json's paths).
    app.include_router(system.router)
    for router in (extra_routers or []) + API_ROUTERS:
        app.include_router(router, responses=API_ERROR_RESPONSES)
    return Pipeline(app, pipeline), app


