"""Commands for integrators: ``login``, ``api``, ``listen``, ``trigger``, ``logs tail`` and
``doctor`` (mounted into ``openpse`` by ``cli.py``).

They act as a merchant's own code would: every API call goes through the SDK (``openpse_sdk``,
signed, with idempotency keys and retries), and nothing of the server is imported, so they work
against any OpenPSE server. Plain HTTP is used only where no API is involved: the hosted
payment page (``trigger``) and the merchant's own webhook URL (``listen``, ``doctor``).

Credentials come from ``--key``/``--secret``/``--base-url``, else ``OPENPSE_ACCESS_KEY``/
``OPENPSE_SECRET``/``OPENPSE_BASE_URL``, else the profile ``openpse login`` writes
(``$OPENPSE_CONFIG_DIR``, default ``~/.config/openpse``; the file is mode 0600).

Exit status: 0 success, 1 the API or a check said no, 2 a usage or configuration mistake.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn
from urllib.parse import parse_qsl, urlsplit

import httpx
import typer

from openpse_sdk import OpenPSE, OpenPSEError, webhooks
from openpse_sdk.errors import APIConnectionError, APIError, CardError, RateLimitError

__all__ = ["Credentials", "Follower", "app", "config_dir", "listen_secret", "resolve_credentials"]

DEFAULT_BASE_URL: Final = "http://127.0.0.1:8000"
PROFILE_FILE: Final = "profile.json"
LISTEN_SECRET_FILE: Final = "listen_secret"  # noqa: S105 (a file name)
API_TIMEOUT_S: Final = 30.0
FORWARD_TIMEOUT_S: Final = 15.0  # what the server allows a real delivery (CONTRACT §5)
FORWARD_ATTEMPTS: Final = 3
FORWARD_BACKOFF_S: Final = (0.5, 1.5)
FOLLOW_LOOKBACK_S: Final = 10  # re-read this much history each poll: late commits still show
FOLLOW_MAX_ITEMS_PER_POLL: Final = 1000
FOLLOW_PAGE_LIMIT: Final = 100
MIN_POLL_INTERVAL_S: Final = 0.1
POLL_ERROR_BACKOFF_S: Final = 2.0
TRIGGER_EVENT_WAIT_S: Final = 15.0
TRIGGER_POLL_S: Final = 0.2
USER_AGENT: Final = "openpse-cli"
HTTP_METHODS: Final = ("GET", "POST", "PATCH", "DELETE", "PUT")

app = typer.Typer(add_completion=False)
logs_app = typer.Typer(help="The merchant's request log.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")

KeyOpt = Annotated[str | None, typer.Option(
    "--key", envvar="OPENPSE_ACCESS_KEY", show_envvar=True,
    help="access key id (ak_test_... or ak_live_...); default: the profile")]
SecretOpt = Annotated[str | None, typer.Option(
    "--secret", envvar="OPENPSE_SECRET", show_envvar=True, show_default=False,
    help="the key's secret; default: the profile")]
BaseUrlOpt = Annotated[str | None, typer.Option(
    "--base-url", envvar="OPENPSE_BASE_URL", show_envvar=True,
    help=f"the OpenPSE server; default: the profile, else {DEFAULT_BASE_URL}")]


# ---- credentials and the profile -------------------------------------------------------------

def config_dir() -> Path:
    """``$OPENPSE_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/openpse``, else ``~/.config/openpse``."""
    explicit = os.environ.get("OPENPSE_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "openpse"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600, directory 0700), atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    os.chmod(path, 0o600)


def read_profile() -> dict[str, Any]:
    path = config_dir() / PROFILE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _usage(f"cannot read the profile {path}: {exc}; run openpse login again")
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret: str
    base_url: str
    source: str  # "flags or environment" | "profile <path>"

    @property
    def livemode(self) -> bool:
        return self.access_key.startswith("ak_live_")

    def client(self, *, max_retries: int = 2, timeout_s: float = API_TIMEOUT_S) -> OpenPSE:
        return OpenPSE(self.base_url, self.access_key, self.secret, max_retries=max_retries,
                       timeout_s=timeout_s)


def resolve_credentials(key: str | None, secret: str | None,
                        base_url: str | None) -> Credentials:
    """Flags, else environment (typer has merged those two), else the profile."""
    profile = read_profile()
    url = (base_url or profile.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
    if key or secret:
        if not (key and secret):
            _usage("give both the access key and its secret (--key and --secret, or "
                   "OPENPSE_ACCESS_KEY and OPENPSE_SECRET)")
        return Credentials(key, secret, url, "flags or environment")
    if profile.get("access_key") and profile.get("secret"):
        return Credentials(str(profile["access_key"]), str(profile["secret"]), url,
                           f"profile {config_dir() / PROFILE_FILE}")
    _usage("no credentials: pass --key and --secret, set OPENPSE_ACCESS_KEY and OPENPSE_SECRET, "
           "or run: openpse login --key ak_test_... --secret ...")


def listen_secret(*, create: bool = True) -> str | None:
    """The stable local signing secret of ``openpse listen`` (created on first use)."""
    path = config_dir() / LISTEN_SECRET_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    if not create:
        return None
    secret = webhooks.SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    write_private(path, secret + "\n")
    return secret


# ---- output helpers --------------------------------------------------------------------------

def _usage(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _pretty(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def _api_failure(exc: OpenPSEError) -> NoReturn:
    """Report an API error (type, code, message, param, request id) and exit 1."""
    if isinstance(exc, APIConnectionError):
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1)
    if isinstance(exc.body, dict):
        typer.echo(_pretty(exc.body))
    lines = [f"error: HTTP {exc.http_status} {exc.type or 'error'} / {exc.code or '-'}",
             f"  message:    {exc.message}"]
    if exc.param:
        lines.append(f"  param:      {exc.param}")
    lines.append(f"  request_id: {exc.request_id or '-'}")
    error = exc.body.get("error") if isinstance(exc.body, dict) else None
    if isinstance(error, dict) and error.get("string_to_sign"):
        lines.append("  the server signed (string_to_sign):")
        lines.extend("    " + line for line in str(error["string_to_sign"]).split("\n"))
    typer.echo("\n".join(lines), err=True)
    raise typer.Exit(1)


def _utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time_s(value: Any) -> int:
    """An RFC 3339 UTC timestamp of the API as Unix seconds (0 when absent or malformed)."""
    if not isinstance(value, str):
        return 0
    try:
        return int(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


# ---- login -----------------------------------------------------------------------------------

@app.command()
def login(
    key: Annotated[str, typer.Option("--key", help="access key id (ak_test_...)")],
    secret: Annotated[str, typer.Option("--secret", prompt=True, hide_input=True,
                                        help="the key's secret (prompted for if not given)")],
    base_url: Annotated[str, typer.Option("--base-url", help="the OpenPSE server")]
    = DEFAULT_BASE_URL,
    verify: Annotated[bool, typer.Option(help="check the key against the server first")] = True,
) -> None:
    """Save an access key to the profile (mode 0600) the other commands use."""
    creds = Credentials(key, secret, base_url.rstrip("/"), "login")
    if verify:
        with creds.client() as client:
            try:
                me = client.account.whoami()
            except OpenPSEError as exc:
                _api_failure(exc)
        typer.echo(f"key {me['access_key']} of merchant {me['merchant']} "
                   f"({'live' if me['livemode'] else 'sandbox'}) at {creds.base_url}")
    path = config_dir() / PROFILE_FILE
    write_private(path, _pretty({"access_key": key, "secret": secret,
                                 "base_url": creds.base_url}) + "\n")
    typer.echo(f"profile written to {path} (mode 0600)")


# ---- api -------------------------------------------------------------------------------------

def _read_data(data: str | None) -> Any:
    if data is None:
        return None
    text = data
    if data.startswith("@"):
        source = data[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            _usage(f"cannot read --data file {source}: {exc}")
    try:
        return json.loads(text)
    except ValueError as exc:
        _usage(f"--data is not JSON: {exc}")


def _query_params(path: str, pairs: list[str]) -> tuple[str, dict[str, list[str]]]:
    params: dict[str, list[str]] = {}
    path, _, inline = path.partition("?")
    for name, value in parse_qsl(inline, keep_blank_values=True):
        params.setdefault(name, []).append(value)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            _usage(f"--query takes key=value; got {pair!r}")
        params.setdefault(name, []).append(value)
    if not path.startswith("/"):
        path = "/v1/" + path
    return path, params


@app.command()
def api(
    method: Annotated[str, typer.Argument(help="GET, POST, PATCH or DELETE")],
    path: Annotated[str, typer.Argument(help="e.g. /v1/payments (or payments)")],
    data: Annotated[str | None, typer.Option(
        "--data", "-d", help="JSON body, or @file, or @- for stdin")] = None,
    query: Annotated[list[str] | None, typer.Option(
        "--query", "-q", help="query parameter key=value (repeatable)")] = None,
    idempotency_key: Annotated[str | None, typer.Option(
        help="Idempotency-Key for a POST (default: a new one, reused on retries)")] = None,
    include: Annotated[bool, typer.Option(
        "--include", "-i", help="also print status and request id (stderr)")] = False,
    key: KeyOpt = None, secret: SecretOpt = None, base_url: BaseUrlOpt = None,
) -> None:
    """Make one signed API call and print the JSON answer."""
    verb = method.upper()
    if verb not in HTTP_METHODS:
        _usage(f"METHOD must be one of {', '.join(HTTP_METHODS)}; got {method!r}")
    body = _read_data(data)
    if body is not None and verb in ("GET", "DELETE"):
        _usage(f"{verb} takes no --data; use --query for parameters")
    if body is None and verb in ("POST", "PUT", "PATCH"):
        body = {}
    target, params = _query_params(path, query or [])
    creds = resolve_credentials(key, secret, base_url)
    with creds.client() as client:
        try:
            result = client.request(verb, target, params=params or None, json=body,
                                    idempotency_key=idempotency_key)
        except OpenPSEError as exc:
            _api_failure(exc)
        meta = client.last_response
    if include and meta is not None:
        replayed = " (idempotent replay)" if meta.idempotent_replayed else ""
        typer.echo(f"HTTP {meta.status_code} request {meta.request_id}{replayed}", err=True)
    typer.echo(_pretty(result))


# ---- following a list as it grows (listen, logs tail) -----------------------------------------

class Follower:
    """New items of a newest-first API list, oldest first, by polling a ``created`` window.

    Each poll re-reads the last :data:`FOLLOW_LOOKBACK_S` seconds before the newest item seen
    and drops ids already seen, so an item committed a little late is still caught and none is
    reported twice. At most :data:`FOLLOW_MAX_ITEMS_PER_POLL` items are read per poll.
    """

    def __init__(self, fetch: Callable[[int], Iterable[dict[str, Any]]]) -> None:
        self._fetch = fetch  # created_gte (Unix seconds) -> items, newest first
        self._seen: dict[str, int] = {}
        self._watermark_s = 0

    def prime(self, start_s: int) -> int:
        """Everything that exists now counts as seen; returns how many items that was."""
        self._watermark_s = start_s
        for item in self._window():
            self._seen[str(item["id"])] = parse_time_s(item.get("created"))
        return len(self._seen)

    def poll(self) -> list[dict[str, Any]]:
        fresh = [item for item in self._window() if str(item["id"]) not in self._seen]
        for item in fresh:
            created = parse_time_s(item.get("created"))
            self._seen[str(item["id"])] = created
            self._watermark_s = max(self._watermark_s, created)
        horizon = self._watermark_s - 2 * FOLLOW_LOOKBACK_S
        self._seen = {k: v for k, v in self._seen.items() if v >= horizon}
        return sorted(fresh, key=lambda it: (parse_time_s(it.get("created")), str(it["id"])))

    def _window(self) -> list[dict[str, Any]]:
        items = self._fetch(self._watermark_s - FOLLOW_LOOKBACK_S)
        return list(islice(items, FOLLOW_MAX_ITEMS_PER_POLL))


def _server_now_s(client: OpenPSE) -> int:
    """The server's wall clock (``whoami``), so a skewed local clock cannot skip events."""
    try:
        return parse_time_s(client.account.whoami().get("server_time")) or int(time.time())
    except OpenPSEError as exc:
        _api_failure(exc)


def _follow(follower: Follower, emit: Callable[[dict[str, Any]], bool], *, interval_s: float,
            timeout_s: float | None) -> bool:
    """Poll and emit until ``emit`` says stop (True) or the timeout passes (False)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    interval_s = max(MIN_POLL_INTERVAL_S, interval_s)
    while deadline is None or time.monotonic() < deadline:
        try:
            fresh = follower.poll()
        except (APIConnectionError, APIError, RateLimitError) as exc:
            # the server restarting, a blip: say so and keep going (the SDK retried already)
            typer.echo(f"warning: polling failed ({exc}); retrying", err=True)
            time.sleep(POLL_ERROR_BACKOFF_S)
            continue
        except OpenPSEError as exc:  # the key was revoked, the address refused: stop
            _api_failure(exc)
        for item in fresh:
            if emit(item):
                return True
        time.sleep(interval_s)
    return False


# ---- listen ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Forwarded:
    status: int | None
    latency_ms: int
    attempts: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _retryable(status: int | None) -> bool:
    return status is None or status in (408, 429) or status >= 500


def forward_event(http: httpx.Client, url: str, secret: str, event: dict[str, Any]) -> Forwarded:
    """POST one event to ``url`` as the server would deliver it (Standard Webhooks), with a few
    retries on connection errors, 408, 429 and 5xx; other answers are final."""
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    status: int | None = None
    error: str | None = None
    latency_ms = 0
    for attempt in range(1, FORWARD_ATTEMPTS + 1):
        headers = webhooks.signed_headers(body, secret, msg_id=str(event["id"]))
        headers.update({"content-type": "application/json", "user-agent": USER_AGENT})
        started = time.perf_counter()
        try:
            response = http.post(url, content=body, headers=headers)
            status, error = response.status_code, None
        except httpx.HTTPError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        latency_ms = int((time.perf_counter() - started) * 1000)
        if not _retryable(status) or attempt == FORWARD_ATTEMPTS:
            return Forwarded(status, latency_ms, attempt, error)
        time.sleep(FORWARD_BACKOFF_S[min(attempt - 1, len(FORWARD_BACKOFF_S) - 1)])
    raise AssertionError("unreachable: the last attempt returns")


def _delivery_line(event: dict[str, Any], result: Forwarded) -> str:
    outcome = f"[{result.status}]" if result.status is not None else f"[failed: {result.error}]"
    retries = f" after {result.attempts} attempts" if result.attempts > 1 else ""
    return (f"{_utc(time.time())}  --> {event.get('type', '?'):<28} {event['id']}  "
            f"{outcome} {result.latency_ms} ms{retries}")


@app.command()
def listen(
    forward_to: Annotated[str | None, typer.Option(
        "--forward-to", "-f", help="local URL to deliver events to, e.g. "
                                   "http://localhost:8080/webhooks")] = None,
    events: Annotated[str | None, typer.Option(
        help="only these event types, comma-separated (default: all)")] = None,
    once: Annotated[bool, typer.Option("--once", help="stop after the first event")] = False,
    max_events: Annotated[int | None, typer.Option(min=1, help="stop after N events")] = None,
    timeout: Annotated[float | None, typer.Option(
        min=0, help="stop after this many seconds (exit 1 if --once/--max-events were not met)"
    )] = None,
    interval: Annotated[float, typer.Option(help="seconds between polls")] = 1.0,
    print_secret: Annotated[bool, typer.Option(
        "--print-secret", help="print the local signing secret and exit")] = False,
    key: KeyOpt = None, secret: SecretOpt = None, base_url: BaseUrlOpt = None,
) -> None:
    """Forward the merchant's events, from now on, to a local URL.

    Each is signed like a real delivery, with a stable local secret (see --print-secret).
    """
    local_secret = listen_secret()
    assert local_secret is not None
    if print_secret:
        typer.echo(local_secret)
        return
    if not forward_to:
        _usage("--forward-to URL is required (e.g. --forward-to http://localhost:8080/webhooks)")
    if urlsplit(forward_to).scheme not in ("http", "https"):
        _usage(f"--forward-to must be an http(s) URL; got {forward_to!r}")
    wanted = {t.strip() for t in (events or "").split(",") if t.strip()}
    limit = 1 if once else max_events
    creds = resolve_credentials(key, secret, base_url)
    count = 0
    with creds.client() as client, httpx.Client(timeout=FORWARD_TIMEOUT_S,
                                                follow_redirects=False) as http:
        server_type = next(iter(wanted)) if len(wanted) == 1 else None

        def fetch(created_gte: int) -> Iterable[dict[str, Any]]:
            return client.events.list_all(limit=FOLLOW_PAGE_LIMIT, created_gte=created_gte,
                                          type=server_type)

        follower = Follower(fetch)
        try:
            follower.prime(_server_now_s(client))
        except OpenPSEError as exc:
            _api_failure(exc)
        typer.echo(f"Ready! Forwarding events of {creds.access_key} "
                   f"({'live' if creds.livemode else 'sandbox'}) to {forward_to}\n"
                   f"Your local webhook signing secret is {local_secret} (stable; stored in "
                   f"{config_dir() / LISTEN_SECRET_FILE})", err=True)

        def emit(event: dict[str, Any]) -> bool:
            nonlocal count
            if wanted and event.get("type") not in wanted:
                return False
            typer.echo(_delivery_line(event, forward_event(http, forward_to, local_secret,
                                                           event)))
            count += 1
            return limit is not None and count >= limit

        try:
            done = _follow(follower, emit, interval_s=interval, timeout_s=timeout)
        except KeyboardInterrupt:
            done = True
    typer.echo(f"forwarded {count} event(s)", err=True)
    if limit is not None and not done:
        raise typer.Exit(1)


# ---- trigger ---------------------------------------------------------------------------------

CARD_SUCCEEDS: Final = "4242424242424242"
CARD_3DS: Final = "4000000000003220"
CARD_DECLINED: Final = "4000000000000002"
_HIDDEN_INPUT = re.compile(r'<input type="hidden" name="(token|nonce)" value="([^"]*)"')


def _card(number: str) -> dict[str, Any]:
    year = datetime.datetime.now(datetime.UTC).year + 4
    return {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": year,
                                     "cvc": "123"}}


def _payment(client: OpenPSE, event_type: str, number: str, **extra: Any) -> dict[str, Any]:
    return client.payments.create(
        amount=1000, currency="JPY", merchant_order_id=f"trigger-{uuid.uuid4().hex[:12]}",
        description=f"openpse trigger {event_type}", payment_method=_card(number), confirm=True,
        **extra)


def _session(client: OpenPSE) -> dict[str, Any]:
    return client.checkout_sessions.create(
        amount=1000, currency="JPY", merchant_order_id=f"trigger-{uuid.uuid4().hex[:12]}",
        payment_method_types=["card"], success_url="https://example.com/success",
        cancel_url="https://example.com/cancel")


def pay_hosted_page(url: str, number: str = CARD_SUCCEEDS) -> httpx.Response:
    """Submit the hosted checkout page's form as a shopper's browser would."""
    with httpx.Client(timeout=API_TIMEOUT_S, follow_redirects=False) as http:
        page = http.get(url)
        page.raise_for_status()
        hidden = dict(_HIDDEN_INPUT.findall(page.text))
        if set(hidden) != {"token", "nonce"}:
            raise RuntimeError(f"no payment form at {url} (HTTP {page.status_code})")
        year = str(datetime.datetime.now(datetime.UTC).year + 4)
        action = url.split("?", 1)[0]
        return http.post(action, data={**hidden, "number": number, "exp_month": "12",
                                       "exp_year": year, "cvc": "123", "name": "Trigger Test"})


def _t_payment(number: str, **extra: Any) -> Callable[[OpenPSE, str], str]:
    def run(client: OpenPSE, event_type: str) -> str:
        return str(_payment(client, event_type, number, **extra)["id"])
    return run


def _t_failed(client: OpenPSE, event_type: str) -> str:
    try:
        _payment(client, event_type, CARD_DECLINED)
    except CardError as exc:
        if exc.payment:
            return str(exc.payment["id"])
        raise
    raise RuntimeError("the declining test card was accepted")


def _t_canceled(client: OpenPSE, event_type: str) -> str:
    payment = _payment(client, event_type, CARD_SUCCEEDS, capture_method="manual")
    client.payments.cancel(payment["id"], cancellation_reason="requested_by_customer")
    return str(payment["id"])


def _t_refund(client: OpenPSE, event_type: str) -> str:
    payment = _payment(client, event_type, CARD_SUCCEEDS)
    return str(client.refunds.create(payment=payment["id"], reason="requested_by_customer")["id"])


def _t_refunded_payment(client: OpenPSE, event_type: str) -> str:
    payment = _payment(client, event_type, CARD_SUCCEEDS)
    client.refunds.create(payment=payment["id"], reason="requested_by_customer")
    return str(payment["id"])


def _t_session_completed(client: OpenPSE, event_type: str) -> str:
    session = _session(client)
    answer = pay_hosted_page(str(session["url"]))
    if answer.status_code != 303:
        raise RuntimeError(f"the hosted page answered HTTP {answer.status_code}, not a redirect")
    return str(session["id"])


def _t_session_expired(client: OpenPSE, event_type: str) -> str:
    session = _session(client)
    client.checkout_sessions.expire(session["id"])
    return str(session["id"])


# event type -> (what it does, how): the recipe returns the id of the event's object
TRIGGERS: Final[dict[str, tuple[str, Callable[[OpenPSE, str], str]]]] = {
    "payment.created": ("a card payment", _t_payment(CARD_SUCCEEDS)),
    "payment.succeeded": ("a card payment that succeeds", _t_payment(CARD_SUCCEEDS)),
    "payment.failed": ("a card payment that is declined", _t_failed),
    "payment.requires_action": ("a card payment that needs 3-D Secure", _t_payment(CARD_3DS)),
    "payment.authorized": ("a card payment authorized for manual capture",
                           _t_payment(CARD_SUCCEEDS, capture_method="manual")),
    "payment.canceled": ("an authorized payment, then canceled", _t_canceled),
    "payment.refunded": ("a card payment, then refunded in full", _t_refunded_payment),
    "refund.created": ("a card payment, then a refund", _t_refund),
    "refund.succeeded": ("a card payment, then a refund", _t_refund),
    "checkout.session.completed": ("a checkout session paid on the hosted page",
                                   _t_session_completed),
    "checkout.session.expired": ("a checkout session, then expired", _t_session_expired),
}


def _wait_for_event(client: OpenPSE, event_type: str, object_id: str) -> dict[str, Any] | None:
    deadline = time.monotonic() + TRIGGER_EVENT_WAIT_S
    while time.monotonic() < deadline:
        page = client.events.list(type=event_type, object_id=object_id, limit=1)
        if page["data"]:
            return dict(page["data"][0])
        time.sleep(TRIGGER_POLL_S)
    return None


@app.command()
def trigger(
    event_type: Annotated[str, typer.Argument(
        help="the event to cause: " + ", ".join(TRIGGERS), show_default=False)],
    key: KeyOpt = None, secret: SecretOpt = None, base_url: BaseUrlOpt = None,
) -> None:
    """Create the sandbox objects that produce EVENT_TYPE, and wait for the event."""
    if event_type not in TRIGGERS:
        _usage(f"cannot trigger {event_type!r}; supported: {', '.join(TRIGGERS)}")
    creds = resolve_credentials(key, secret, base_url)
    if creds.livemode:
        _usage("trigger makes test payments: use a sandbox key (ak_test_...), never a live one")
    what, recipe = TRIGGERS[event_type]
    with creds.client() as client:
        try:
            object_id = recipe(client, event_type)
            typer.echo(f"created {what}: {object_id}", err=True)
            event = _wait_for_event(client, event_type, object_id)
        except OpenPSEError as exc:
            _api_failure(exc)
        except (httpx.HTTPError, RuntimeError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    if event is None:
        typer.echo(f"error: no {event_type} event for {object_id} within "
                   f"{TRIGGER_EVENT_WAIT_S:.0f} s", err=True)
        raise typer.Exit(1)
    typer.echo(f"triggered {event_type} {event['id']} for {object_id}")


# ---- logs tail -------------------------------------------------------------------------------

def _log_line(row: dict[str, Any]) -> str:
    code = f"  {row['error_code']}" if row.get("error_code") else ""
    query = f"?{row['query']}" if row.get("query") else ""
    return (f"{row.get('created', '')}  {row['id']}  {row.get('method', '?'):<6} "
            f"{row.get('path', '')}{query}  {row.get('status')}  {row.get('duration_ms')} ms"
            f"{code}")


@logs_app.command("tail")
def logs_tail(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new requests")]
    = False,
    limit: Annotated[int, typer.Option(min=1, max=100, help="how many recent requests first")]
    = 20,
    status: Annotated[int | None, typer.Option(help="only this HTTP status")] = None,
    timeout: Annotated[float | None, typer.Option(min=0, help="stop following after S seconds")]
    = None,
    interval: Annotated[float, typer.Option(help="seconds between polls")] = 1.0,
    include_self: Annotated[bool, typer.Option(
        "--include-self", help="also show this command's own polling requests")] = False,
    key: KeyOpt = None, secret: SecretOpt = None, base_url: BaseUrlOpt = None,
) -> None:
    """Print the merchant's request log (redacted), newest last; --follow keeps going."""
    creds = resolve_credentials(key, secret, base_url)

    def shown(row: dict[str, Any]) -> bool:
        own = row.get("path") == "/v1/request_logs" and row.get("access_key_id") == \
            creds.access_key
        return include_self or not own

    def emit(row: dict[str, Any]) -> bool:
        if shown(row):
            typer.echo(_log_line(row))
        return False

    with creds.client() as client:
        try:
            recent = client.request_logs.list(limit=limit, status=status)["data"]
        except OpenPSEError as exc:
            _api_failure(exc)
        for row in reversed(recent):
            emit(row)
        if not follow:
            return

        def fetch(created_gte: int) -> Iterable[dict[str, Any]]:
            return client.request_logs.list_all(limit=FOLLOW_PAGE_LIMIT, status=status,
                                                created_gte=created_gte)

        follower = Follower(fetch)
        try:
            follower.prime(_server_now_s(client))
        except OpenPSEError as exc:
            _api_failure(exc)
        typer.echo("following the request log (Ctrl-C to stop)", err=True)
        try:
            _follow(follower, emit, interval_s=interval, timeout_s=timeout)
        except KeyboardInterrupt:
            pass


# ---- doctor ----------------------------------------------------------------------------------

@app.command()
def doctor(
    endpoint: Annotated[str | None, typer.Option(
        help="a webhook handler URL to run the conformance checks against")] = None,
    endpoint_secret: Annotated[str | None, typer.Option(
        envvar="OPENPSE_WEBHOOK_SECRET", show_envvar=True, show_default=False,
        help="the whsec_ secret that handler verifies with (default: the listen secret)")]
    = None,
    event: Annotated[str | None, typer.Option(
        help="send this real event (evt_...) in the conformance run instead of a synthetic "
             "one")] = None,
    ca_bundle: Annotated[Path | None, typer.Option(
        help="extra CA certificates (PEM) to trust for https endpoints")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the findings as JSON")] = False,
    key: KeyOpt = None, secret: SecretOpt = None, base_url: BaseUrlOpt = None,
) -> None:
    """Check this integration against common pitfalls; exit 1 if anything fails."""
    from openpse import doctor as checks

    creds = resolve_credentials(key, secret, base_url)
    profile = config_dir() / PROFILE_FILE
    options = checks.Options(
        endpoint=endpoint,
        endpoint_secret=endpoint_secret or listen_secret(create=False),
        event_id=event,
        ca_bundle=str(ca_bundle) if ca_bundle else None,
        profile_path=profile if creds.source.startswith("profile") else None,
    )
    findings: list[checks.Finding] = []

    def report(finding: checks.Finding) -> None:
        findings.append(finding)
        if not as_json:
            typer.echo(finding.render())

    with creds.client(max_retries=0) as client:
        checks.run(client, creds.base_url, options, report)
    failed = sum(f.status == "FAIL" for f in findings)
    if as_json:
        typer.echo(_pretty([f.as_dict() for f in findings]))
    else:
        warned = sum(f.status == "WARN" for f in findings)
        passed = sum(f.status == "PASS" for f in findings)
        typer.echo(f"\n{passed} passed, {warned} warning(s), {failed} failed")
    raise typer.Exit(1 if failed else 0)
