"""Secrets at rest: authenticated encryption and keyed fingerprints under the master key.

- ``SecretBox`` encrypts with AES-256-GCM. A ciphertext is ``v<key version>:<base64(nonce |
  ciphertext | tag)>`` with the row's purpose bound in as associated data, so a ciphertext
  copied to another row or column does not decrypt. Several key versions can be loaded at
  once: new rows use the newest, old rows still decrypt (rotation re-wraps them later).
- ``Fingerprinter`` is HMAC-SHA256 under a key derived from the master key: the same card
  gives the same fingerprint, and a database dump alone cannot test guesses against it.

Keys are derived with HKDF from the master key, one per purpose, so no two uses share a key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["DecryptionFailed", "Fingerprinter", "SecretBox", "derive_key"]

NONCE_BYTES = 12
_DECRYPT_FAILED = "cannot decrypt: wrong key, altered or moved ciphertext"


class DecryptionFailed(Exception):
    """A ciphertext was altered, moved, or made under a key that is not loaded."""


def derive_key(master_key: bytes, purpose: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"openpse-v1", info=purpose.encode()
    ).derive(master_key)


class SecretBox:
    def __init__(self, master_keys: dict[int, bytes], *, purpose: str = "secrets") -> None:
        if not master_keys:
            raise ValueError("at least one master key is needed")
        self._aead = {v: AESGCM(derive_key(k, purpose)) for v, k in master_keys.items()}
        self.current_version = max(master_keys)

    def encrypt(self, plaintext: str, *, context: str) -> str:
        return self.encrypt_bytes(plaintext.encode(), context=context).decode("ascii")

    def decrypt(self, token: str, *, context: str) -> str:
        return self.decrypt_bytes(token.encode(), context=context).decode()

    def encrypt_bytes(self, plaintext: bytes, *, context: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        ct = self._aead[self.current_version].encrypt(nonce, plaintext, context.encode())
        return f"v{self.current_version}:".encode() + base64.b64encode(nonce + ct)

    def decrypt_bytes(self, token: bytes, *, context: str) -> bytes:
        head, _, body = token.partition(b":")
        try:
            aead = self._aead[int(head[1:])]
            raw = base64.b64decode(body)
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except Exception as exc:
            raise DecryptionFailed(_DECRYPT_FAILED) from exc


class Fingerprinter:
    def __init__(self, master_key: bytes, *, purpose: str = "card-fingerprint") -> None:
        self._key = derive_key(master_key, purpose)

    def fingerprint(self, value: str) -> str:
        """A stable, keyed, non-reversible tag (32 hex characters)."""
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:32]
