"""The payment state machine: one transition table, and nothing else changes a status.

    requires_payment_method -> requires_confirmation -> (requires_action) -> processing
        -> requires_capture | succeeded | failed
    canceled from any state before succeeded

``succeeded``, ``failed`` and ``canceled`` are terminal: a late acquirer answer for a payment in
a terminal state is never applied (the caller records it for review instead).
"""

from __future__ import annotations

from dataclasses import dataclass

from openpse.domain.errors import Conflict

__all__ = [
    "CANCELLATION_REASONS",
    "CAPTURE_METHODS",
    "EVENT_FOR_STATUS",
    "TERMINAL",
    "TRANSITIONS",
    "Status",
    "assert_transition",
    "can_transition",
]


class Status:
    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    REQUIRES_CONFIRMATION = "requires_confirmation"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    REQUIRES_CAPTURE = "requires_capture"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


S = Status
TERMINAL = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELED})

# from-state -> the states it may move to. Every status change in the code goes through here.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.REQUIRES_PAYMENT_METHOD: frozenset({S.REQUIRES_CONFIRMATION, S.CANCELED}),
    S.REQUIRES_CONFIRMATION: frozenset(
        {S.REQUIRES_PAYMENT_METHOD, S.PROCESSING, S.REQUIRES_ACTION, S.FAILED, S.CANCELED}
    ),
    S.REQUIRES_ACTION: frozenset(
        {S.PROCESSING, S.REQUIRES_CAPTURE, S.SUCCEEDED, S.FAILED, S.CANCELED}
    ),
    S.PROCESSING: frozenset(
        {S.REQUIRES_ACTION, S.REQUIRES_CAPTURE, S.SUCCEEDED, S.FAILED, S.CANCELED}
    ),
    S.REQUIRES_CAPTURE: frozenset({S.PROCESSING, S.SUCCEEDED, S.CANCELED, S.FAILED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELED: frozenset(),
}

# The event a payment emits on entering a status (None: no event of its own).
EVENT_FOR_STATUS: dict[str, str | None] = {
    S.REQUIRES_PAYMENT_METHOD: None,
    S.REQUIRES_CONFIRMATION: None,
    S.REQUIRES_ACTION: "payment.requires_action",
    S.PROCESSING: "payment.processing",
    S.REQUIRES_CAPTURE: "payment.authorized",
    S.SUCCEEDED: "payment.succeeded",
    S.FAILED: "payment.failed",
    S.CANCELED: "payment.canceled",
}

CAPTURE_METHODS = ("automatic", "manual")
CANCELLATION_REASONS = ("requested_by_customer", "expired", "fraudulent", "duplicate", "abandoned")


def can_transition(current: str, new: str) -> bool:
    return new in TRANSITIONS.get(current, frozenset())


def assert_transition(payment_id: str, current: str, new: str, *, action: str) -> None:
    """Raise the contract's 409 ``payment_invalid_state`` unless ``current -> new`` is legal."""
    if not can_transition(current, new):
        raise Conflict(
            f"cannot {action} payment {payment_id}: it is {current}"
            + (" (a final state)" if current in TERMINAL else ""),
            code="payment_invalid_state",
        )


@dataclass(frozen=True)
class Amounts:
    """Money fields of a payment; invariants checked on every change (never stripped by -O)."""

    amount: int
    amount_capturable: int
    amount_received: int
    amount_refunded: int

    def check(self) -> None:
        ok = (
            0 <= self.amount_capturable <= self.amount
            and 0 <= self.amount_received <= self.amount
            and 0 <= self.amount_refunded <= self.amount_received
        )
        if not ok:
            raise RuntimeError(f"payment amount invariant broken: {self}")
