"""Request bodies of checkout sessions (strict: see ``api.models``). Types are checked here;
the rules (URLs, method types, expiry range, currency) in ``services.checkout``, which names the
offending ``param`` the same way."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictInt, StrictStr

from openpse.api.models import Strict
from openpse.api.payment_models import Customer, Metadata, Str255

__all__ = ["CheckoutSessionCreate"]

Url = Annotated[StrictStr, Field(max_length=2048)]


class CheckoutSessionCreate(Strict):
    amount: StrictInt
    currency: Annotated[StrictStr, Field(max_length=3)]
    merchant_order_id: Str255
    payment_method_types: Annotated[list[StrictStr], Field(max_length=6)]
    success_url: Url
    cancel_url: Url
    locale: Annotated[StrictStr, Field(max_length=16)] | None = None
    customer: Customer | None = None
    expires_in_seconds: StrictInt | None = None
    metadata: Metadata | None = None
