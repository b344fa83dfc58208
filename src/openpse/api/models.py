"""Request bodies. Every model forbids unknown fields and uses strict types, so a float amount,
a string where a number belongs or a read-only field (``status``, ``livemode`` ...) is a 400
naming the offending ``param`` and nothing is written."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

__all__ = ["AccessKeyCreate", "AccessKeyRotate", "AccessKeyUpdate", "Strict"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AccessKeyCreate(Strict):
    mode: Annotated[str, Field(pattern="^(test|live)$")] | None = Field(
        default=None, description="test or live; defaults to the calling key's mode")
    ip_allowlist: list[StrictStr] | None = Field(default=None, max_length=100)
    description: Annotated[StrictStr, Field(max_length=200)] | None = None


class AccessKeyRotate(Strict):
    overlap_seconds: Annotated[StrictInt, Field(ge=0, le=30 * 86400)] = 86400


class AccessKeyUpdate(Strict):
    ip_allowlist: list[StrictStr] | None = Field(default=None, max_length=100)
    description: Annotated[StrictStr, Field(max_length=200)] | None = None
