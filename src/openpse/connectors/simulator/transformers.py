"""The sandbox acquirer's rules, pure: which test card does what (CONTRACT §6)."""

from __future__ import annotations

from openpse.connectors.base import AuthorizeRequest, ConnectorResult, Outcome

__all__ = ["DECLINES", "SUCCESS_CARDS", "THREE_DS_CARD", "authorize_outcome"]

SUCCESS_CARDS = frozenset({"4242424242424242", "5555555555554444", "3566002020360505"})
THREE_DS_CARD = "4000000000003220"
DISPUTE_CARD = "4000000000000259"
DECLINES: dict[str, tuple[str, str]] = {
    "4000000000000002": ("card_declined", "The card was declined by the issuer."),
    "4000000000009995": ("insufficient_funds", "The card has insufficient funds."),
    "4000000000000069": ("expired_card", "The card has expired."),
    "4000000000000127": ("incorrect_cvc", "The card's security code is incorrect."),
    "4000000000000119": ("processing_error", "The acquirer had an error processing the card."),
}


def authorize_outcome(req: AuthorizeRequest, connector_reference: str) -> ConnectorResult:
    """What the simulated network answers to an authorisation."""
    card = req.card
    number = card.number if card else ""
    if number in DECLINES:
        code, message = DECLINES[number]
        outcome = Outcome.ERROR if code == "processing_error" else Outcome.DECLINED
        return ConnectorResult(outcome, connector_reference, code, message, raw={"code": code})
    if number == THREE_DS_CARD and req.three_ds is None:
        return ConnectorResult(Outcome.REQUIRES_ACTION, connector_reference,
                               action={"type": "three_ds_challenge"}, raw={"3ds": "required"})
    if req.three_ds == "failed":
        return ConnectorResult(Outcome.DECLINED, connector_reference, "authentication_failed",
                               "The shopper failed 3-D Secure authentication.",
                               raw={"3ds": "failed"})
    outcome = Outcome.CAPTURED if req.capture else Outcome.AUTHORIZED
    raw = {"approved": True, "dispute_expected": number == DISPUTE_CARD}
    return ConnectorResult(outcome, connector_reference, raw=raw)
