"""Health and metrics (no authentication: bind them to an internal interface in production)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from openpse import process_metrics
from openpse.api.errors import JSON_CONTENT_TYPE, json_bytes

router = APIRouter(tags=["system"])


class Health(BaseModel):
    status: str
    database: str | None = None


@router.get("/healthz", summary="200 when the database answers, 503 otherwise",
            response_model=Health,
            responses={503: {"model": Health, "description": "the database does not answer"}})
async def healthz(request: Request) -> Response:
    ok = await request.app.state.services.db.ping()
    body = {"status": "ok"} if ok else {"status": "unavailable", "database": "unreachable"}
    return Response(json_bytes(body), status_code=200 if ok else 503,
                    media_type=JSON_CONTENT_TYPE)


@router.get("/metrics", summary="Prometheus text format", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    # every process's samples when several share a metrics directory (process_metrics.py)
    registry = process_metrics.registry_to_scrape(request.app.state.metrics_registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
