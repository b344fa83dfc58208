"""Endpoint secrets: sealed per endpoint, rotated with a bounded overlap (no I/O)."""

from __future__ import annotations

import pytest

from openpse.crypto import DecryptionFailed, SecretBox
from openpse.webhooks import keyring
from openpse.webhooks.outbox import subscribes

BOX = SecretBox({1: b"k" * 32})


def test_sealed_keyring_opens_only_for_its_endpoint() -> None:
    entries = keyring.new_keyring()
    sealed = keyring.seal_keyring(BOX, "we_a", entries)
    assert entries[0]["secret"] not in sealed
    assert keyring.open_keyring(BOX, "we_a", sealed) == entries
    with pytest.raises(DecryptionFailed):
        keyring.open_keyring(BOX, "we_b", sealed)


def test_rotation_overlaps_then_expires() -> None:
    first = keyring.new_keyring()
    second = keyring.rotate(first, now_s=1000, expire_previous_in_s=600)
    assert second[0]["expires_at"] is None and second[0]["secret"] != first[0]["secret"]
    assert second[1] == {"secret": first[0]["secret"], "expires_at": 1600}
    assert keyring.active_secrets(second, now_s=1599) == [second[0]["secret"],
                                                          first[0]["secret"]]
    assert keyring.active_secrets(second, now_s=1600) == [second[0]["secret"]]
    # A second rotation never extends the first overlap, and drops what already expired.
    third = keyring.rotate(second, now_s=1200, expire_previous_in_s=3600)
    assert [e["expires_at"] for e in third] == [None, 4800, 1600]
    assert len(keyring.rotate(third, now_s=2000, expire_previous_in_s=10)) == 3


def test_rotation_without_overlap_and_the_cap() -> None:
    ring = keyring.new_keyring()
    assert len(keyring.rotate(ring, now_s=5, expire_previous_in_s=0)) == 1
    for i in range(10):
        ring = keyring.rotate(ring, now_s=100 + i, expire_previous_in_s=3600)
    assert len(ring) == keyring.MAX_ACTIVE_SECRETS
    assert len(keyring.active_secrets(ring, now_s=200)) == keyring.MAX_ACTIVE_SECRETS
    with pytest.raises(ValueError):
        keyring.rotate(ring, now_s=1, expire_previous_in_s=keyring.MAX_ROTATION_OVERLAP_S + 1)


def test_subscriptions() -> None:
    assert subscribes(["*"], "payment.succeeded")
    assert subscribes(["refund.failed", "payment.succeeded"], "payment.succeeded")
    assert not subscribes(["refund.failed"], "payment.succeeded")


def test_every_event_type_the_code_emits_can_be_subscribed_to() -> None:
    """A type missing from EVENT_TYPES could never be chosen in enabled_events (only "*")."""
    import re
    from pathlib import Path

    from openpse.services.webhook_endpoints import EVENT_TYPES

    src = Path(__file__).resolve().parents[2] / "src" / "openpse"
    pattern = re.compile(
        r"\"((?:payment|refund|checkout\.session|dispute|payout|settlement|webhook_endpoint)"
        r"\.[a-z_.]+)\"")
    emitted = {m for f in src.rglob("*.py") for m in pattern.findall(f.read_text())}
    assert emitted, "the scan found no event types at all"
    assert emitted <= EVENT_TYPES, sorted(emitted - EVENT_TYPES)
