"""The ``openpse`` command line (CONTRACT §9)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from openpse.config import Settings, UnsafeConfiguration, generate_master_key

app = typer.Typer(help="OpenPSE: a self-hostable payment service.", no_args_is_help=True,
                  add_completion=False)
merchant_app = typer.Typer(help="Merchants and their access keys.", no_args_is_help=True)
keys_app = typer.Typer(help="Access keys: create, rotate, revoke.", no_args_is_help=True)
app.add_typer(merchant_app, name="merchant")
app.add_typer(keys_app, name="keys")

DbOpt = Annotated[str | None, typer.Option("--database-url", envvar="OPENPSE_DATABASE_URL",
                                           help="sqlite:///path or postgresql://...")]


def _settings(database_url: str | None = None) -> Settings:
    settings = Settings()
    if database_url:
        settings.database_url = database_url
    return settings


def _prepare(settings: Settings) -> None:
    """Every command initialises a new embedded database itself; elsewhere `migrate` does.
    (Through storage.migrate, not bootstrap: a command that needs only the database, such as
    `ledger verify`, then does not import the API.)"""
    from openpse.storage.migrate import ensure_schema

    embedded = settings.database_url is None or settings.database_url.startswith("sqlite")
    try:
        settings.master_key_bytes()
        url = settings.resolved_database_url()
        if embedded and url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_schema(url, create=embedded)
    except (UnsafeConfiguration, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@app.command()
def migrate(database_url: DbOpt = None) -> None:
    """Bring the database schema up to date (Alembic)."""
    from openpse.storage.migrate import head_revision, upgrade

    settings = _settings(database_url)
    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(url)
    typer.echo(f"schema is at revision {head_revision()}")


@app.command()
def keygen() -> None:
    """Print a fresh master key for OPENPSE_MASTER_KEY."""
    typer.echo(generate_master_key())


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    database_url: DbOpt = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="API only, no background jobs")]
    = False,
    workers: Annotated[int, typer.Option(help="API processes (PostgreSQL recommended for >1)")]
    = 1,
) -> None:
    """Run the API, hosted pages and (unless --no-worker) the background worker."""
    import uvicorn

    from openpse import process_metrics

    settings = _settings(database_url)
    if database_url:
        os.environ["OPENPSE_DATABASE_URL"] = database_url
    try:
        settings.check_safe()
    except UnsafeConfiguration as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    _prepare(settings)
    _ensure_demo_merchant(settings)
    os.environ["OPENPSE_RUN_WORKER"] = "0" if no_worker else "1"
    typer.echo(f"OpenPSE listening on http://{host}:{port} (database: "
               f"{_safe_url(settings.resolved_database_url())})", err=True)
    # proxy_headers=False: the API pipeline alone decides whom to believe about the client's
    # address (OPENPSE_TRUSTED_PROXIES); uvicorn's own default would trust any local peer.
    # Several processes: /metrics sums them all (process_metrics.py)
    with process_metrics.shared_dir_for(workers):
        uvicorn.run("openpse.asgi:create", factory=True, host=host, port=port,
                    workers=workers, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=10, proxy_headers=False)


@app.command()
def worker(database_url: DbOpt = None) -> None:
    """Background jobs only (webhook delivery, expiries, settlement, housekeeping)."""
    from openpse.bootstrap import run_worker

    settings = _settings(database_url)
    _prepare(settings)
    _run(run_worker(settings))


def _safe_url(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _ensure_demo_merchant(settings: Settings) -> None:
    """First start of an embedded database: a demo merchant whose sandbox keys print once."""
    from openpse.bootstrap import build_services
    from openpse.services import merchants as m

    if settings.database_url is not None:
        return
    marker = settings.data_dir / "demo-merchant-created"
    if marker.exists():
        return

    async def _go() -> tuple[dict[str, Any], m.IssuedKey]:
        svc = build_services(settings)
        try:
            merchant = await m.create_merchant(svc, name="Demo Shop", kyc_approved=False)
            return merchant, await m.create_access_key(svc, merchant["id"], livemode=False)
        finally:
            await svc.db.dispose()

    merchant, issued = _run(_go())
    marker.write_text(merchant["id"] + "\n")
    typer.echo(
        "Created a demo merchant (shown once, keep the secret):\n"
        f"  merchant_id = {merchant['id']}\n  access_key  = {issued.key['id']}\n"
        f"  secret      = {issued.secret}", err=True,
    )


@merchant_app.command("create")
def merchant_create(
    name: Annotated[str, typer.Option(help="the merchant's name")],
    email: Annotated[str | None, typer.Option(help="contact email")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON only")] = False,
    approve: Annotated[bool, typer.Option(help="mark KYC approved (allows live keys)")] = False,
    database_url: DbOpt = None,
) -> None:
    """Create a merchant with a sandbox key pair."""
    from openpse.bootstrap import build_services
    from openpse.services import merchants as m

    settings = _settings(database_url)
    _prepare(settings)

    async def _go() -> tuple[dict[str, Any], m.IssuedKey]:
        svc = build_services(settings)
        try:
            merchant = await m.create_merchant(svc, name=name, email=email, kyc_approved=approve)
            return merchant, await m.create_access_key(svc, merchant["id"], livemode=False)
        finally:
            await svc.db.dispose()

    merchant, issued = _run(_go())
    out = {"merchant_id": merchant["id"], "access_key": issued.key["id"],
           "secret": issued.secret}
    if as_json:
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        typer.echo(f"merchant {merchant['id']} ({merchant['status']})\n"
                   f"access key {issued.key['id']}\nsecret {issued.secret}  (shown once)")


def _key_command(fn_name: str, merchant_id: str, key_id: str | None, database_url: str | None,
                 **kw: Any) -> Any:
    from openpse.bootstrap import build_services
    from openpse.domain.errors import DomainError
    from openpse.services import merchants as m

    settings = _settings(database_url)
    _prepare(settings)

    async def _go() -> Any:
        svc = build_services(settings)
        try:
            fn = getattr(m, fn_name)
            return await (fn(svc, merchant_id, key_id, **kw) if key_id else
                          fn(svc, merchant_id, **kw))
        finally:
            await svc.db.dispose()

    try:
        return _run(_go())
    except DomainError as exc:
        typer.echo(f"error: {exc.message} ({exc.code})", err=True)
        raise typer.Exit(1) from exc


def _print_key(result: Any) -> None:
    if hasattr(result, "secret"):
        result = {**result.key, "secret": result.secret}
    typer.echo(json.dumps(result, indent=2))


@keys_app.command("create")
def keys_create(
    merchant: Annotated[str, typer.Option(help="merchant id")],
    live: Annotated[bool, typer.Option("--live", help="a live key (needs approved KYC)")] = False,
    allow_ip: Annotated[list[str] | None, typer.Option(help="allowed CIDR (repeatable)")] = None,
    database_url: DbOpt = None,
) -> None:
    """Create an access key; the secret is printed once."""
    _print_key(_key_command("create_access_key", merchant, None, database_url, livemode=live,
                            ip_allowlist=allow_ip or None))


@keys_app.command("list")
def keys_list(merchant: Annotated[str, typer.Option(help="merchant id")],
              database_url: DbOpt = None) -> None:
    """List a merchant's keys (never their secrets)."""
    _print_key(_key_command("list_access_keys", merchant, None, database_url))


@keys_app.command("rotate")
def keys_rotate(
    merchant: Annotated[str, typer.Option(help="merchant id")],
    key: Annotated[str, typer.Option(help="the key to replace")],
    overlap_seconds: Annotated[int, typer.Option(help="how long the old key stays valid")]
    = 86400,
    database_url: DbOpt = None,
) -> None:
    """Issue a replacement key; the old one expires after the overlap."""
    _print_key(_key_command("rotate_access_key", merchant, key, database_url,
                            overlap_s=overlap_seconds))


@keys_app.command("revoke")
def keys_revoke(merchant: Annotated[str, typer.Option(help="merchant id")],
                key: Annotated[str, typer.Option(help="the key to revoke")],
                database_url: DbOpt = None) -> None:
    """Revoke a key at once."""
    _print_key(_key_command("revoke_access_key", merchant, key, database_url))


ledger_app = typer.Typer(help="The double-entry ledger.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("verify")
def ledger_verify(
    database_url: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Check every journal balances and all accounts sum to zero; exit 1 if anything is off."""
    from openpse.storage.db import Database
    from openpse.storage.ledger_verify import VerifyReport, verify_ledger

    settings = _settings(database_url)
    _prepare(settings)

    async def _go() -> VerifyReport:
        db = Database(settings.resolved_database_url())  # the database alone: no app to build
        try:
            async with db.read() as conn:
                return await verify_ledger(conn)
        finally:
            await db.dispose()

    report = _run(_go())
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict()) + "\n")
    else:
        typer.echo(f"{report.journals} journals, {report.postings} postings, {report.accounts} "
                   f"accounts: " + ("the ledger balances" if report.ok else "PROBLEMS FOUND"))
        for problem in report.problems:
            typer.echo("  - " + problem)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def demo(
    data_dir: Annotated[Path | None, typer.Option(help="where the demo database goes "
                                                        "(default: a fresh temp dir)")] = None,
) -> None:
    """Run the main flows end to end against a fresh embedded database, narrated."""
    from openpse.demo import run_demo

    raise typer.Exit(run_demo(data_dir))


# Commands for integrators (login, api, listen, trigger, logs tail, doctor): they use the SDK.
from openpse.devcli import app as _devcli_app  # noqa: E402

app.add_typer(_devcli_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
