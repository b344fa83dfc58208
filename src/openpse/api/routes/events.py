"""Events: list (type, object, created range), get (the stored payload, byte for byte), and
redeliver to one endpoint or to every endpoint that subscribes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from openpse.api.deps import CallerDep, ListParamsDep, ServicesDep
from openpse.api.errors import JSON_CONTENT_TYPE
from openpse.api.webhook_models import EventRedeliver
from openpse.services import event_log

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.get("", summary="List events, newest first")
async def list_events(
    caller: CallerDep, svc: ServicesDep, page: ListParamsDep,
    type: Annotated[str | None, Query(max_length=64, description="e.g. payment.succeeded")]
    = None,
    object_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Any:
    return await event_log.list_events(svc, caller, type=type, object_id=object_id,
                                       **page.kwargs())


@router.get("/{event_id}", summary="Get an event exactly as its webhooks carry it")
async def get_event(event_id: str, caller: CallerDep, svc: ServicesDep) -> Response:
    payload = await event_log.get_event_payload(svc, caller, event_id)
    return Response(payload.encode(), media_type=JSON_CONTENT_TYPE)


@router.post("/{event_id}/redeliver",
             summary="Send the event again (same webhook-id) to one or all subscribed endpoints")
async def redeliver(event_id: str, caller: CallerDep, svc: ServicesDep,
                    body: EventRedeliver | None = None) -> Any:
    endpoint = body.endpoint if body is not None else None
    return await event_log.redeliver_event(svc, caller, event_id, endpoint_id=endpoint)
