"""API representations of stored rows (what responses and event payloads carry)."""

from __future__ import annotations

from typing import Any

from openpse.storage.rows import rfc3339

__all__ = ["destination_view", "payment_view", "refund_view"]


def payment_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "payment",
        "livemode": bool(row["livemode"]),
        "status": row["status"],
        "amount": row["amount"],
        "currency": row["currency"],
        "amount_capturable": row["amount_capturable"],
        "amount_received": row["amount_received"],
        "amount_refunded": row["amount_refunded"],
        "refunded": row["amount_received"] > 0 and row["amount_refunded"] == row["amount_received"],
        # Received beyond ``amount`` (an over-paid bank transfer): the shopper's, refundable.
        "amount_overpaid": row.get("amount_overpaid") or 0,
        "amount_overpaid_refunded": row.get("amount_overpaid_refunded") or 0,
        "fee": row["fee"],
        "capture_method": row["capture_method"],
        "merchant_order_id": row["merchant_order_id"],
        "description": row["description"],
        "customer": row["customer"],
        "billing_address": row["billing_address"],
        "device": row["device"],
        "return_url": row["return_url"],
        "metadata": row["metadata"] or {},
        "payment_method": row["payment_method"],
        "next_action": row["next_action"],
        "expires_at": rfc3339(row["expires_at"]),
        "failure_code": row["failure_code"],
        "failure_message": row["failure_message"],
        "cancellation_reason": row["cancellation_reason"],
        "checkout_session": row["checkout_session_id"],
        "captured_at": rfc3339(row["captured_at"]),
        "canceled_at": rfc3339(row["canceled_at"]),
        "created": rfc3339(row["created"]),
        "updated": rfc3339(row["updated"]),
        "version": row["version"],
    }


def refund_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "refund",
        "livemode": bool(row["livemode"]),
        "payment": row["payment_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "status": row["status"],
        "reason": row["reason"],
        "metadata": row["metadata"] or {},
        "failure_code": row["failure_code"],
        "failure_message": row["failure_message"],
        "source": row.get("source") or "payment",
        "destination": destination_view(row.get("destination")),
        "created": rfc3339(row["created"]),
        "updated": rfc3339(row["updated"]),
        "version": row["version"],
    }


def destination_view(dest: dict[str, Any] | None) -> dict[str, Any] | None:
    """A refund's bank account as shown: never the encrypted full number stored beside it."""
    if not dest:
        return None
    return {k: v for k, v in dest.items() if not k.endswith("_enc")}
