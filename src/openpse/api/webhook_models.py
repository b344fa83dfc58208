"""Request bodies of webhook endpoints and events (strict: see ``api.models``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool, StrictInt, StrictStr

from openpse.api.models import Strict
from openpse.webhooks.keyring import MAX_ROTATION_OVERLAP_S

__all__ = ["EventRedeliver", "WebhookEndpointCreate", "WebhookEndpointUpdate",
           "WebhookSecretRotate"]

DEFAULT_ROTATION_OVERLAP_S = 86400

Url = Annotated[StrictStr, Field(min_length=1, max_length=2048)]
EventTypes = Annotated[list[Annotated[StrictStr, Field(max_length=64)]],
                       Field(min_length=1, max_length=100)]
Description = Annotated[StrictStr, Field(max_length=500)]


class WebhookEndpointCreate(Strict):
    url: Url
    enabled_events: EventTypes
    description: Description | None = None


class WebhookEndpointUpdate(Strict):
    """Only the fields sent change; ``enabled: false`` disables, ``true`` enables again."""

    url: Url | None = None
    enabled_events: EventTypes | None = None
    description: Description | None = None
    enabled: StrictBool | None = None


class WebhookSecretRotate(Strict):
    expire_previous_in_seconds: Annotated[
        StrictInt, Field(ge=0, le=MAX_ROTATION_OVERLAP_S)
    ] = DEFAULT_ROTATION_OVERLAP_S


class EventRedeliver(Strict):
    endpoint: Annotated[StrictStr, Field(max_length=64)] | None = None
