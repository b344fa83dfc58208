"""Request bodies of payments, refunds and checkout sessions (strict: see ``api.models``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr

from openpse.api.models import Strict

__all__ = [
    "CancelIn",
    "CaptureIn",
    "ClockAdvanceIn",
    "ConfirmIn",
    "DebitFailIn",
    "FundIn",
    "PayVoucherIn",
    "PaymentCreate",
    "PaymentMethodIn",
    "RefundCompleteIn",
    "RefundCreate",
    "ThreeDSIn",
]

Str255 = Annotated[StrictStr, Field(max_length=255)]
Metadata = Annotated[dict[StrictStr, StrictStr], Field(max_length=50)]


class CardIn(Strict):
    number: Annotated[StrictStr, Field(max_length=32)]
    exp_month: StrictInt
    exp_year: StrictInt
    cvc: Annotated[StrictStr, Field(max_length=8)] | None = None
    holder_name: Annotated[StrictStr, Field(max_length=200)] | None = None


class PaymentMethodIn(Strict):
    type: Literal["card", "konbini", "pay_easy", "bank_transfer", "boleto", "sepa_debit"]
    card: CardIn | None = None
    token: Annotated[StrictStr, Field(max_length=64)] | None = None
    konbini: dict[str, object] | None = None
    pay_easy: dict[str, object] | None = None
    bank_transfer: dict[str, object] | None = None
    boleto: dict[str, object] | None = None
    sepa_debit: dict[str, object] | None = None


class Customer(Strict):
    email: Annotated[StrictStr, Field(max_length=320)] | None = None
    name: Annotated[StrictStr, Field(max_length=200)] | None = None
    phone: Annotated[StrictStr, Field(max_length=40)] | None = None


class Address(Strict):
    line1: Str255 | None = None
    line2: Str255 | None = None
    city: Str255 | None = None
    state: Str255 | None = None
    postal_code: Annotated[StrictStr, Field(max_length=32)] | None = None
    country: Annotated[StrictStr, Field(min_length=2, max_length=2)] | None = None


class Device(Strict):
    ip: Annotated[StrictStr, Field(max_length=64)] | None = None
    fingerprint: Str255 | None = None
    user_agent: Annotated[StrictStr, Field(max_length=1000)] | None = None


class PaymentCreate(Strict):
    amount: StrictInt
    currency: Annotated[StrictStr, Field(max_length=3)]
    merchant_order_id: Str255
    payment_method: PaymentMethodIn | None = None
    capture_method: Literal["automatic", "manual"] = "automatic"
    confirm: StrictBool = False
    description: Annotated[StrictStr, Field(max_length=1000)] | None = None
    customer: Customer | None = None
    billing_address: Address | None = None
    device: Device | None = None
    return_url: Annotated[StrictStr, Field(max_length=2048)] | None = None
    metadata: Metadata | None = None


class ConfirmIn(Strict):
    payment_method: PaymentMethodIn | None = None
    return_url: Annotated[StrictStr, Field(max_length=2048)] | None = None


class CaptureIn(Strict):
    amount: StrictInt | None = None


class CancelIn(Strict):
    cancellation_reason: Literal[
        "requested_by_customer", "expired", "fraudulent", "duplicate", "abandoned"] | None = None


class ThreeDSIn(Strict):
    outcome: Literal["succeed", "fail"]


class RefundCreate(Strict):
    payment: Annotated[StrictStr, Field(max_length=64)]
    amount: StrictInt | None = None
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None
    metadata: Metadata | None = None
    # The shopper's bank account, for methods refunded by bank transfer (checked in the domain).
    destination: dict[str, object] | None = None
    source: Literal["payment", "overpayment"] | None = None


# ---- sandbox test helpers of the local methods -------------------------------------------

class PayVoucherIn(Strict):
    store: Literal["seven_eleven", "familymart", "lawson", "ministop", "seicomart"] | None = None


class FundIn(Strict):
    amount: StrictInt


class DebitFailIn(Strict):
    failure_code: Literal["insufficient_funds", "account_closed", "debit_not_authorized"] | None \
        = None


class ClockAdvanceIn(Strict):
    seconds: StrictInt


class RefundCompleteIn(Strict):
    outcome: Literal["succeed", "fail"]
