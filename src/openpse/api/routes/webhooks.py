"""Webhook endpoints: create (secret shown once), get, list, update, delete, rotate the secret,
and each endpoint's delivery log with every attempt."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from openpse.api.deps import CallerDep, ListParamsDep, ServicesDep
from openpse.api.webhook_models import (
    WebhookEndpointCreate,
    WebhookEndpointUpdate,
    WebhookSecretRotate,
)
from openpse.domain.errors import InvalidRequest
from openpse.services import webhook_endpoints as svc_endpoints

router = APIRouter(prefix="/v1/webhook_endpoints", tags=["webhook endpoints"])

BAD_URL: dict[int | str, dict[str, Any]] = {
    400: {"description": "invalid_webhook_url: refused by the SSRF guard"},
}


@router.post("", status_code=201, responses=BAD_URL,
             summary="Create a webhook endpoint (its secret is shown once)")
async def create_endpoint(body: WebhookEndpointCreate, caller: CallerDep,
                          svc: ServicesDep) -> Any:
    return await svc_endpoints.create_endpoint(
        svc, caller, url=body.url, enabled_events=body.enabled_events,
        description=body.description)


@router.get("", summary="List webhook endpoints, newest first")
async def list_endpoints(caller: CallerDep, svc: ServicesDep, page: ListParamsDep) -> Any:
    return await svc_endpoints.list_endpoints(svc, caller, **page.kwargs())


@router.get("/{endpoint_id}", summary="Get a webhook endpoint")
async def get_endpoint(endpoint_id: str, caller: CallerDep, svc: ServicesDep) -> Any:
    return await svc_endpoints.get_endpoint(svc, caller, endpoint_id)


@router.patch("/{endpoint_id}", responses=BAD_URL,
              summary="Update url, enabled_events, description, or enable/disable")
async def update_endpoint(endpoint_id: str, body: WebhookEndpointUpdate, caller: CallerDep,
                          svc: ServicesDep) -> Any:
    changes = body.model_dump(exclude_unset=True)
    for field in ("url", "enabled_events", "enabled"):
        if field in changes and changes[field] is None:
            raise InvalidRequest(f"{field} cannot be null; leave it out to keep it",
                                 param=field)
    return await svc_endpoints.update_endpoint(svc, caller, endpoint_id, **changes)


@router.delete("/{endpoint_id}", summary="Delete a webhook endpoint (pending deliveries stop)")
async def delete_endpoint(endpoint_id: str, caller: CallerDep, svc: ServicesDep) -> Any:
    return await svc_endpoints.delete_endpoint(svc, caller, endpoint_id)


@router.post("/{endpoint_id}/rotate_secret",
             summary="New secret now; the previous one signs too until it expires")
async def rotate_secret(endpoint_id: str, caller: CallerDep, svc: ServicesDep,
                        body: WebhookSecretRotate | None = None) -> Any:
    body = body or WebhookSecretRotate()
    return await svc_endpoints.rotate_secret(
        svc, caller, endpoint_id, expire_previous_in_s=body.expire_previous_in_seconds)


@router.get("/{endpoint_id}/deliveries",
            summary="The endpoint's deliveries, newest first, with every attempt")
async def list_deliveries(
    endpoint_id: str, caller: CallerDep, svc: ServicesDep, page: ListParamsDep,
    status: Annotated[Literal["pending", "succeeded", "failed", "canceled"] | None,
                      Query()] = None,
    event: Annotated[str | None, Query(max_length=64)] = None,
) -> Any:
    return await svc_endpoints.list_deliveries(svc, caller, endpoint_id, status=status,
                                               event_id=event, **page.kwargs())
