"""An endpoint's signing secrets: sealed at rest, rotated with an overlap.

An endpoint holds a short list of secrets, newest first: ``[{"secret": "whsec_...",
"expires_at": <unix s> | None}, ...]``. The newest never expires; a rotation prepends a fresh
secret and gives the previous ones an expiry (``expire_previous_in_seconds``), so during the
overlap every delivery carries one signature per active secret (CONTRACT §5) and a receiver
holding either verifies. At most ``MAX_ACTIVE_SECRETS`` are active: a rotation beyond that
expires the oldest at once.

The list is stored as one AES-GCM ciphertext (``openpse.crypto.SecretBox``) bound to the
endpoint id, so a ciphertext copied onto another endpoint row does not decrypt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import orjson

from openpse.crypto import SecretBox
from openpse.webhooks.signing import generate_secret

__all__ = [
    "MAX_ACTIVE_SECRETS",
    "MAX_ROTATION_OVERLAP_S",
    "SecretEntry",
    "active_secrets",
    "new_keyring",
    "open_keyring",
    "rotate",
    "seal_keyring",
]

MAX_ACTIVE_SECRETS = 4
MAX_ROTATION_OVERLAP_S = 7 * 86400


class SecretEntry(TypedDict):
    secret: str
    expires_at: int | None


def _context(endpoint_id: str) -> str:
    return f"webhook_endpoint:{endpoint_id}"


def new_keyring() -> list[SecretEntry]:
    """A keyring with one fresh secret that never expires."""
    return [{"secret": generate_secret(), "expires_at": None}]


def seal_keyring(box: SecretBox, endpoint_id: str, entries: Sequence[SecretEntry]) -> str:
    return box.encrypt(orjson.dumps(list(entries)).decode(), context=_context(endpoint_id))


def open_keyring(box: SecretBox, endpoint_id: str, sealed: str) -> list[SecretEntry]:
    """Raises ``openpse.crypto.DecryptionFailed`` if the ciphertext is not this endpoint's."""
    entries: list[SecretEntry] = orjson.loads(box.decrypt(sealed, context=_context(endpoint_id)))
    return entries


def active_secrets(entries: Sequence[SecretEntry], *, now_s: int) -> list[str]:
    """The secrets that sign a delivery sent at ``now_s``, newest first."""
    return [
        e["secret"] for e in entries if e["expires_at"] is None or e["expires_at"] > now_s
    ][:MAX_ACTIVE_SECRETS]


def rotate(
    entries: Sequence[SecretEntry], *, now_s: int, expire_previous_in_s: int
) -> list[SecretEntry]:
    """A new keyring: a fresh secret first, the still-active previous ones expiring by then.

    A previous secret that already has an earlier expiry keeps it (a second rotation never
    extends the first one's overlap). Expired secrets are dropped; beyond
    ``MAX_ACTIVE_SECRETS`` the oldest are dropped too.
    """
    if not 0 <= expire_previous_in_s <= MAX_ROTATION_OVERLAP_S:
        raise ValueError(f"expire_previous_in_s must be in [0, {MAX_ROTATION_OVERLAP_S}]")
    deadline = now_s + expire_previous_in_s
    kept: list[SecretEntry] = []
    if expire_previous_in_s > 0:
        for entry in entries:
            expires_at = entry["expires_at"]
            if expires_at is not None and expires_at <= now_s:
                continue
            new_expiry = deadline if expires_at is None else min(expires_at, deadline)
            kept.append({"secret": entry["secret"], "expires_at": new_expiry})
    fresh: SecretEntry = {"secret": generate_secret(), "expires_at": None}
    return [fresh, *kept][:MAX_ACTIVE_SECRETS]
