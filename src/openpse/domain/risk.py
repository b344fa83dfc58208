"""Risk checks that run before any acquirer call. Sandbox rule: the test card
4100000000000019 is blocked as fraudulent (CONTRACT §6)."""

from __future__ import annotations

__all__ = ["BLOCKED_TEST_CARDS", "RISK_BLOCK_CODE", "risk_blocks"]

RISK_BLOCK_CODE = "fraudulent"
# BIN6:last4 of cards the rules block outright.
BLOCKED_TEST_CARDS = frozenset({"410000:0019"})


def risk_blocks(*, card_key: str, fingerprint: str | None, amount: int) -> bool:
    return card_key in BLOCKED_TEST_CARDS
