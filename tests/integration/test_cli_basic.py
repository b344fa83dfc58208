"""The command line (CONTRACT §9): merchants and keys made on the same database as a running
server, and ``serve`` refusing unsafe or outdated set-ups with a message that names the fix."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat

import pytest

from tests.conftest import BACKEND, PG_BASE_URL, MerchantKit, _pg_admin, new_merchant
from tests.support.api_asserts import assert_error
from tests.support.servers import TEST_MASTER_KEY, free_port, run_cli

REFUSAL_TIMEOUT_S = 30


def _env(data_dir, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENPSE_")}
    env.update({"OPENPSE_DATA_DIR": str(data_dir), **extra})
    return env


@pytest.fixture
def cli_env(tmp_path):
    return _env(tmp_path / "cli", OPENPSE_MASTER_KEY=TEST_MASTER_KEY)


def _create_merchant(migrated_db: str, env: dict[str, str], *extra: str) -> dict[str, str]:
    res = run_cli(["merchant", "create", "--name", "CLI Shop", "--email", "ops@example.com",
                   "--json", "--database-url", migrated_db, *extra], env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.endswith("\n") and res.stdout.count("\n") == 1, res.stdout
    out = json.loads(res.stdout)
    assert set(out) == {"merchant_id", "access_key", "secret"}
    return out


def test_merchant_create_json_prints_one_object(migrated_db, server, cli_env):
    out = _create_merchant(migrated_db, cli_env)
    assert out["merchant_id"].startswith("mch_") and out["access_key"].startswith("ak_test_")
    assert out["secret"].startswith("sk_test_")
    kit = MerchantKit(out["merchant_id"], out["access_key"], out["secret"], server.base_url)
    account = kit.raw().get("/v1/account").json()
    assert account["id"] == out["merchant_id"] and account["email"] == "ops@example.com"
    assert account["status"] == "pending_review"


async def test_keys_rotate_and_revoke(migrated_db, services, server, cli_env):
    kit = await new_merchant(services, server.base_url)
    res = run_cli(["keys", "rotate", "--merchant", kit.merchant_id, "--key", kit.access_key,
                   "--overlap-seconds", "0", "--database-url", migrated_db], cli_env)
    assert res.returncode == 0, res.stderr
    rotated = json.loads(res.stdout)
    assert rotated["id"].startswith("ak_test_") and rotated["secret"].startswith("sk_test_")
    new = MerchantKit(kit.merchant_id, rotated["id"], rotated["secret"], server.base_url)
    assert_error(kit.raw().get("/v1/account"), 401, "authentication_error", "key_revoked")
    assert new.raw().get("/v1/account").status_code == 200

    res = run_cli(["keys", "revoke", "--merchant", kit.merchant_id, "--key", rotated["id"],
                   "--database-url", migrated_db], cli_env)
    assert res.returncode == 0, res.stderr
    revoked = json.loads(res.stdout)
    assert revoked["id"] == rotated["id"] and revoked["status"] == "revoked"
    assert "secret" not in revoked and rotated["secret"] not in res.stdout
    assert_error(new.raw().get("/v1/account"), 401, "authentication_error", "key_revoked")


async def test_keys_create_live_refuses_with_the_reason(migrated_db, services, server, cli_env):
    kit = await new_merchant(services, server.base_url)
    res = run_cli(["keys", "create", "--merchant", kit.merchant_id, "--live",
                   "--database-url", migrated_db], cli_env)
    assert res.returncode == 1 and res.stdout == ""
    assert "kyc_required" in res.stderr


def test_embedded_default_generates_a_private_master_key(tmp_path):
    data_dir = tmp_path / "embedded"
    res = run_cli(["merchant", "create", "--name", "Embedded", "--json"], _env(data_dir))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["secret"].startswith("sk_test_")
    key_file = data_dir / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (data_dir / "openpse.db").exists()


def _serve(env: dict[str, str], *args: str):
    return run_cli(["serve", "--port", str(free_port()), "--no-worker", *args], env,
                   timeout_s=REFUSAL_TIMEOUT_S)


def test_live_serve_without_master_key_refuses(tmp_path, migrated_db):
    res = _serve(_env(tmp_path, OPENPSE_ENVIRONMENT="live", OPENPSE_DATABASE_URL=migrated_db))
    assert res.returncode != 0
    assert "OPENPSE_MASTER_KEY" in res.stderr
    assert not (tmp_path / "master.key").exists()


@pytest.mark.parametrize("extra, needle", [
    ({"OPENPSE_ALLOW_LOCAL_WEBHOOKS": "1"}, "OPENPSE_ALLOW_LOCAL_WEBHOOKS"),
    ({"OPENPSE_MASTER_KEY": "c2hvcnQ="}, "32 bytes"),
])
def test_live_serve_refuses_unsafe_settings(tmp_path, migrated_db, extra, needle):
    env = _env(tmp_path, OPENPSE_ENVIRONMENT="live", OPENPSE_DATABASE_URL=migrated_db,
               OPENPSE_MASTER_KEY=TEST_MASTER_KEY)
    env.update(extra)
    res = _serve(env)
    assert res.returncode != 0 and needle in res.stderr, res.stderr


def test_live_serve_without_database_url_refuses(tmp_path):
    res = _serve(_env(tmp_path, OPENPSE_ENVIRONMENT="live", OPENPSE_MASTER_KEY=TEST_MASTER_KEY))
    assert res.returncode != 0 and "OPENPSE_DATABASE_URL" in res.stderr, res.stderr


@pytest.mark.skipif(BACKEND != "postgresql", reason="an unmigrated database only exists on "
                                                    "PostgreSQL; SQLite creates its schema")
def test_serve_on_unmigrated_postgresql_names_migrate(tmp_path):
    name = "openpse_empty_" + secrets.token_hex(4)
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        url = PG_BASE_URL.rsplit("/", 1)[0] + "/" + name
        res = _serve(_env(tmp_path, OPENPSE_MASTER_KEY=TEST_MASTER_KEY), "--database-url", url)
        assert res.returncode != 0
        assert "openpse migrate" in res.stderr, res.stderr
        res = run_cli(["merchant", "create", "--name", "X", "--json", "--database-url", url],
                      _env(tmp_path, OPENPSE_MASTER_KEY=TEST_MASTER_KEY))
        assert res.returncode != 0 and res.stdout == ""
        assert "openpse migrate" in res.stderr, res.stderr
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
