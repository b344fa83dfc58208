"""One Settings object, read from flags and ``OPENPSE_*`` environment variables.

The embedded default (no configuration at all) is an SQLite database and a generated master key
in the data directory. Live mode refuses to start with a generated or missing master key.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MASTER_KEY_FILE", "Settings", "UnsafeConfiguration"]

MASTER_KEY_FILE = "master.key"
DEFAULT_RATE_LIMIT_PER_S = 100
DEFAULT_TIMESTAMP_WINDOW_S = 300
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class UnsafeConfiguration(RuntimeError):
    """The configuration would be unsafe for the requested mode; the message says what to set."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENPSE_", extra="ignore")

    data_dir: Path = Path(".openpse")
    database_url: str | None = None
    master_key: SecretStr | None = None
    # "sandbox" allows only test-mode traffic conveniences; "live" enforces production rules.
    environment: str = Field(default="sandbox", pattern="^(sandbox|live)$")
    allow_local_webhooks: bool = False
    redis_url: str | None = None
    public_url: str | None = None
    rate_limit: int = DEFAULT_RATE_LIMIT_PER_S
    timestamp_window_s: int = DEFAULT_TIMESTAMP_WINDOW_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Peers whose X-Forwarded-For we believe (comma separated CIDRs). Empty: trust nobody.
    trusted_proxies: str = ""
    # Operator token for /v1/operator routes (KYC, ledger adjustments). Unset: operator API off.
    admin_token: SecretStr | None = None
    log_level: str = "INFO"
    log_file: Path | None = None
    # Keep the redacted request log this many days.
    request_log_retention_days: int = 30
    # An Idempotency-Key whose request is still "in progress" after this long is taken to
    # belong to a crashed process, and a retry takes it over and resumes the work.
    idempotency_lock_timeout_s: int = 30
    # PostgreSQL: each API process keeps the access keys it has read until a notification
    # (LISTEN openpse_auth) says they changed (storage/key_cache.py). Off: every request reads
    # its key. It turns itself off where notifications do not arrive (PgBouncer in
    # transaction mode); set it off there anyway to save the probe's connections.
    key_cache: bool = True
    # Worker poll interval when idle.
    worker_poll_interval_s: float = 0.5
    # ``payment.expiring_soon`` is emitted this long before an unpaid voucher or bank transfer
    # expires (once per payment; 0 turns it off).
    payment_expiring_soon_s: int = Field(default=3600, ge=0, le=30 * 86400)

    @field_validator("rate_limit")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("OPENPSE_RATE_LIMIT must be >= 0 (0 turns limits off)")
        return v

    # ---- derived values -------------------------------------------------------------------
    @property
    def livemode_server(self) -> bool:
        return self.environment == "live"

    def resolved_database_url(self) -> str:
        """The SQLAlchemy async URL for the configured database."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'openpse.db').resolve()}"
        return to_async_url(url)

    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        nets = []
        for part in self.trusted_proxies.split(","):
            part = part.strip()
            if part:
                nets.append(ipaddress.ip_network(part, strict=False))
        return nets

    def master_key_bytes(self) -> bytes:
        """The 32-byte key that encrypts secrets at rest.

        Explicit ``OPENPSE_MASTER_KEY`` (base64 of 32 bytes) wins. Otherwise the embedded default
        generates one into the data directory; live mode refuses that.
        """
        if self.master_key:
            return decode_master_key(self.master_key.get_secret_value())
        if self.livemode_server:
            raise UnsafeConfiguration(
                "live mode needs an explicit OPENPSE_MASTER_KEY (base64 of 32 random bytes, e.g. "
                "from `openpse keygen`); a generated key in the data directory is for sandbox only"
            )
        return load_or_create_key_file(self.data_dir / MASTER_KEY_FILE)

    def check_safe(self) -> None:
        """Refuse unsafe settings before serving."""
        self.master_key_bytes()
        if self.livemode_server and self.allow_local_webhooks:
            raise UnsafeConfiguration(
                "OPENPSE_ALLOW_LOCAL_WEBHOOKS=1 is for sandbox servers only; unset it in live mode"
            )
        if self.livemode_server and self.database_url is None:
            raise UnsafeConfiguration(
                "live mode needs an explicit OPENPSE_DATABASE_URL (PostgreSQL recommended)"
            )


def to_async_url(url: str) -> str:
    if url.startswith("sqlite:///") or url == "sqlite://":
        return "sqlite+aiosqlite" + url[len("sqlite") :]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def decode_master_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise UnsafeConfiguration("OPENPSE_MASTER_KEY must be base64 of 32 bytes") from exc
    if len(key) != 32:
        raise UnsafeConfiguration(
            f"OPENPSE_MASTER_KEY must decode to 32 bytes, it decodes to {len(key)}"
        )
    return key


def generate_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def load_or_create_key_file(path: Path) -> bytes:
    """Read the key file, creating it atomically (several processes may start at once)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_master_key() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process won the race: we then read theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return decode_master_key(path.read_text())
