"""The connector interface: one method per flow, the same for every acquirer.

A connector module keeps three things apart (after hyperswitch's connectors):
- request building and response parsing, pure functions with no I/O (``transformers.py``);
- the I/O itself (``connector.py``): one call per flow, always with a timeout;
- the mapping of the acquirer's own statuses to ``Outcome`` values, in exactly one place.

Money crosses this boundary as ``int`` minor units plus the ISO code; converting to an
acquirer's own unit happens only inside that connector. Every call carries ``reference``: the
attempt id we persisted before calling, which the acquirer must treat as an idempotency key,
so a retry after a crash never charges twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["AuthorizeRequest", "CardData", "Connector", "ConnectorResult", "Outcome"]


class Outcome:
    AUTHORIZED = "authorized"  # funds held; capture later
    CAPTURED = "captured"  # money taken
    REQUIRES_ACTION = "requires_action"  # the shopper must do something (3-D Secure)
    DECLINED = "declined"  # a definite no, with a decline code
    PENDING = "pending"  # no answer yet (asynchronous methods, or unknown after a fault)
    SUCCEEDED = "succeeded"  # void / refund done
    FAILED = "failed"  # void / refund refused
    ERROR = "error"  # the acquirer failed; the outcome is a decline with processing_error


@dataclass(frozen=True, repr=False)
class CardData:
    number: str
    exp_month: int
    exp_year: int
    cvc: str | None = None
    holder_name: str | None = None

    def __repr__(self) -> str:  # never show the number or CVC
        return f"CardData(last4={self.number[-4:]!r}, exp={self.exp_month:02d}/{self.exp_year})"


@dataclass(frozen=True)
class AuthorizeRequest:
    reference: str
    payment_id: str
    amount: int
    currency: str
    method: str
    capture: bool
    card: CardData | None = None
    three_ds: str | None = None  # None, or the result of the shopper's challenge: succeeded|failed
    return_url: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConnectorResult:
    outcome: str
    connector_reference: str | None = None
    decline_code: str | None = None
    message: str | None = None
    action: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)


class Connector(Protocol):
    name: str

    async def authorize(self, req: AuthorizeRequest) -> ConnectorResult: ...

    async def capture(self, reference: str, connector_reference: str, amount: int,
                      currency: str) -> ConnectorResult: ...

    async def void(self, reference: str, connector_reference: str) -> ConnectorResult: ...

    async def refund(self, reference: str, connector_reference: str, amount: int,
                     currency: str) -> ConnectorResult: ...

    async def sync(self, reference: str) -> ConnectorResult | None:
        """The acquirer's record of the call made with ``reference`` (None: it never arrived)."""
        ...
