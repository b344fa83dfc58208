"""The payment transition table (CONTRACT §4 Payments), checked pair by pair against an
independent statement of the rules, plus the amount invariants."""

from __future__ import annotations

import itertools

import pytest

from openpse.domain.errors import Conflict
from openpse.domain.payments import (
    EVENT_FOR_STATUS,
    TERMINAL,
    TRANSITIONS,
    Amounts,
    Status,
    assert_transition,
    can_transition,
)

RPM = "requires_payment_method"
RC = "requires_confirmation"
RA = "requires_action"
PR = "processing"
RCAP = "requires_capture"
OK = "succeeded"
FAIL = "failed"
CXL = "canceled"
ALL = [RPM, RC, RA, PR, RCAP, OK, FAIL, CXL]

# The rules as the contract states them, written out here rather than imported, with the reason
# for every edge that is not on the contract's main line.
LEGAL = {
    (RPM, RC),  # a payment method is attached
    (RC, PR),  # confirm
    (RC, RA),  # 3-D Secure needed before the acquirer call
    (RC, RPM),  # the payment method is detached/replaced
    (RC, FAIL),  # blocked by risk checks before any acquirer call
    (RA, PR),  # the shopper finished the challenge
    (RA, RCAP), (RA, OK), (RA, FAIL),  # an asynchronous method completes
    (PR, RA),  # the acquirer asks for 3-D Secure
    (PR, RCAP), (PR, OK), (PR, FAIL),  # the acquirer answers
    (RCAP, PR),  # a capture or void is in flight
    (RCAP, OK),  # captured
    (RCAP, FAIL),  # the authorisation lapsed
    # canceled from any state before succeeded
    (RPM, CXL), (RC, CXL), (RA, CXL), (PR, CXL), (RCAP, CXL),
}


def test_statuses_are_exactly_the_contracts():
    assert set(TRANSITIONS) == set(ALL)
    assert {v for k, v in vars(Status).items() if k.isupper()} == set(ALL)
    assert set(EVENT_FOR_STATUS) == set(ALL)
    assert {OK, FAIL, CXL} == TERMINAL


@pytest.mark.parametrize(("current", "new"), list(itertools.product(ALL, ALL)))
def test_every_pair(current: str, new: str) -> None:
    legal = (current, new) in LEGAL
    assert can_transition(current, new) is legal
    if legal:
        assert_transition("pay_x", current, new, action="test")
        return
    with pytest.raises(Conflict) as info:
        assert_transition("pay_x", current, new, action="test")
    assert info.value.code == "payment_invalid_state"
    assert "pay_x" in info.value.message and current in info.value.message


def test_table_has_no_edge_the_rules_do_not_name():
    edges = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert edges == LEGAL


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_are_final(terminal: str) -> None:
    assert TRANSITIONS[terminal] == frozenset()
    for new in ALL:
        with pytest.raises(Conflict, match="final state"):
            assert_transition("pay_x", terminal, new, action="change")


def test_succeeded_is_never_canceled_and_nothing_skips_confirmation():
    assert not can_transition(OK, CXL)
    for target in (PR, RA, RCAP, OK):
        assert not can_transition(RPM, target)
    assert not can_transition(RC, RCAP) and not can_transition(RC, OK)


def test_no_state_changes_to_itself_through_the_table():
    for s in ALL:
        assert not can_transition(s, s)


def test_unknown_states_are_illegal():
    assert not can_transition("bogus", RC)
    assert not can_transition(RC, "bogus")
    with pytest.raises(Conflict):
        assert_transition("pay_x", "bogus", CXL, action="cancel")


def test_every_status_reachable_from_the_start():
    seen, todo = {RPM}, [RPM]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(ALL)


def test_events_for_entering_states():
    assert EVENT_FOR_STATUS[RCAP] == "payment.authorized"
    assert EVENT_FOR_STATUS[OK] == "payment.succeeded"
    assert EVENT_FOR_STATUS[FAIL] == "payment.failed"
    assert EVENT_FOR_STATUS[CXL] == "payment.canceled"
    assert EVENT_FOR_STATUS[RA] == "payment.requires_action"


@pytest.mark.parametrize("amounts", [
    (1000, 0, 0, 0), (1000, 1000, 0, 0), (1000, 0, 1000, 1000), (1000, 0, 600, 100),
])
def test_amount_invariants_hold(amounts: tuple[int, int, int, int]) -> None:
    Amounts(*amounts).check()


@pytest.mark.parametrize("amounts", [
    (1000, 1001, 0, 0),  # capturable above amount
    (1000, 0, 1001, 0),  # received above amount
    (1000, 0, 500, 501),  # refunded above received
    (1000, -1, 0, 0), (1000, 0, -1, 0), (1000, 0, 0, -1),
])
def test_amount_invariants_broken(amounts: tuple[int, int, int, int]) -> None:
    with pytest.raises(RuntimeError, match="invariant"):
        Amounts(*amounts).check()
