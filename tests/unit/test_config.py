"""Settings (CONTRACT §9): the embedded default, the generated master key, and refusals of
unsafe live configurations. No server, no database."""

from __future__ import annotations

import base64
import ipaddress
import stat

import pytest
from pydantic import SecretStr, ValidationError

from openpse.config import (
    MASTER_KEY_FILE,
    Settings,
    UnsafeConfiguration,
    decode_master_key,
    generate_master_key,
    load_or_create_key_file,
    to_async_url,
)

KEY_B64 = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("OPENPSE_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_sandbox(tmp_path):
    s = Settings(data_dir=tmp_path)
    assert s.environment == "sandbox" and not s.livemode_server
    assert s.rate_limit == 100 and s.timestamp_window_s == 300
    assert s.max_body_bytes == 1024 * 1024
    assert s.resolved_database_url() == f"sqlite+aiosqlite:///{(tmp_path / 'openpse.db').resolve()}"
    assert s.trusted_proxy_networks() == []


def test_environment_variables_are_read(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENPSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OPENPSE_RATE_LIMIT", "7")
    monkeypatch.setenv("OPENPSE_TRUSTED_PROXIES", "10.0.0.1, 192.168.0.0/16 ,")
    monkeypatch.setenv("OPENPSE_DATABASE_URL", "postgresql://u:p@db:5432/openpse")
    monkeypatch.setenv("OPENPSE_ALLOW_LOCAL_WEBHOOKS", "1")
    s = Settings()
    assert s.data_dir == tmp_path and s.rate_limit == 7 and s.allow_local_webhooks is True
    assert s.trusted_proxy_networks() == [ipaddress.ip_network("10.0.0.1/32"),
                                          ipaddress.ip_network("192.168.0.0/16")]
    assert s.resolved_database_url() == "postgresql+asyncpg://u:p@db:5432/openpse"


@pytest.mark.parametrize("name, value", [("OPENPSE_RATE_LIMIT", "-1"),
                                         ("OPENPSE_ENVIRONMENT", "production"),
                                         ("OPENPSE_RATE_LIMIT", "fast")])
def test_invalid_values_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert name.removeprefix("OPENPSE_").lower() in str(info.value)


def test_rate_limit_zero_turns_limits_off(monkeypatch):
    monkeypatch.setenv("OPENPSE_RATE_LIMIT", "0")
    assert Settings().rate_limit == 0


@pytest.mark.parametrize("url, expected", [
    ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ("sqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
    ("postgres://h/db", "postgresql+asyncpg://h/db"),
    ("postgresql://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db"),
    ("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db"),
])
def test_database_urls_become_async_urls(url, expected):
    assert to_async_url(url) == expected


def test_generated_master_key_file_is_private_and_reused(tmp_path):
    s = Settings(data_dir=tmp_path / "data")
    key = s.master_key_bytes()
    path = tmp_path / "data" / MASTER_KEY_FILE
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings(data_dir=tmp_path / "data").master_key_bytes() == key
    assert [p.name for p in path.parent.iterdir()] == [MASTER_KEY_FILE]  # no temp file left


def test_existing_key_file_is_never_overwritten(tmp_path):
    path = tmp_path / MASTER_KEY_FILE
    path.write_text(KEY_B64 + "\n")
    assert load_or_create_key_file(path) == bytes(range(32))
    assert path.read_text() == KEY_B64 + "\n"


def test_explicit_master_key_wins_and_writes_nothing(tmp_path):
    s = Settings(data_dir=tmp_path, master_key=SecretStr(KEY_B64))
    assert s.master_key_bytes() == bytes(range(32))
    assert not (tmp_path / MASTER_KEY_FILE).exists()
    assert KEY_B64 not in repr(s)


@pytest.mark.parametrize("text, needle", [("not base64!", "base64"),
                                          (base64.b64encode(b"short").decode(), "32 bytes")])
def test_bad_master_keys_are_refused(text, needle):
    with pytest.raises(UnsafeConfiguration, match=needle):
        decode_master_key(text)


def test_generated_keys_decode_to_32_random_bytes():
    a, b = generate_master_key(), generate_master_key()
    assert a != b and len(decode_master_key(a)) == 32


def test_live_mode_refuses_a_generated_key(tmp_path):
    s = Settings(data_dir=tmp_path, environment="live", database_url="postgresql://h/db")
    with pytest.raises(UnsafeConfiguration, match="OPENPSE_MASTER_KEY"):
        s.check_safe()
    assert not (tmp_path / MASTER_KEY_FILE).exists()


@pytest.mark.parametrize("kw, needle", [
    ({"database_url": "postgresql://h/db", "allow_local_webhooks": True},
     "OPENPSE_ALLOW_LOCAL_WEBHOOKS"),
    ({}, "OPENPSE_DATABASE_URL"),
])
def test_live_mode_refuses_sandbox_conveniences(tmp_path, kw, needle):
    s = Settings(data_dir=tmp_path, environment="live", master_key=SecretStr(KEY_B64), **kw)
    with pytest.raises(UnsafeConfiguration, match=needle):
        s.check_safe()


def test_safe_live_configuration_passes(tmp_path):
    Settings(data_dir=tmp_path, environment="live", master_key=SecretStr(KEY_B64),
             database_url="postgresql://h/db").check_safe()
