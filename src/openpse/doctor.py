"""``openpse doctor``: check an integration against the pitfalls merchants hit, with a fix for
each finding.

Checks, in order: the profile's file permissions; the server answers; clock skew (its ``Date``
header, or the server's own measure when a request is refused for it); the access key (known,
not revoked, the secret matches), its mode and rotation state; whether this host's address
passes the key's IP allowlist (``GET /v1/whoami`` says which address the server sees); each
webhook endpoint (enabled, reachable from here, TLS certificate valid and days to expiry, its
last delivery); and, with an endpoint URL and its secret, a conformance run: a correctly signed
event must get a 2xx within 15 s, a wrongly signed one, a stale and a future timestamp must be
refused, and a duplicate must still get a 2xx.

API calls go through the SDK like any merchant code; nothing of the server is imported.
"""

from __future__ import annotations

import calendar
import email.utils
import ipaddress
import json
import secrets
import socket
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from openpse_sdk import OpenPSE, OpenPSEError, webhooks
from openpse_sdk.errors import AuthenticationError, NotFoundError

__all__ = ["Finding", "Options", "run"]

SERVER_TIMEOUT_S: Final = 5.0
CONNECT_TIMEOUT_S: Final = 5.0
DELIVERY_LIMIT_S: Final = 15.0  # CONTRACT §5: a 2xx within 15 s
SLOW_ANSWER_S: Final = 5.0
CLOCK_OK_S: Final = 10
CLOCK_WINDOW_S: Final = 300  # requests and webhook timestamps are accepted within ±300 s
PROBE_SKEW_S: Final = 600  # the stale/future probes: twice outside the tolerance
CERT_WARN_DAYS: Final = 14
MAX_ENDPOINTS: Final = 20
EXCERPT_CHARS: Final = 120
SECONDS_PER_DAY: Final = 86400
USER_AGENT: Final = "openpse-doctor"

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"


def _now_s() -> float:
    """This machine's clock (a seam for tests)."""
    return time.time()


@dataclass(frozen=True)
class Finding:
    status: str  # PASS | WARN | FAIL | SKIP
    check: str
    detail: str
    fix: str | None = None

    def render(self) -> str:
        line = f"{self.status:<4}  {self.check:<24} {self.detail}"
        if self.fix and self.status in (WARN, FAIL):
            line += f"\n      fix: {self.fix}"
        return line

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Options:
    endpoint: str | None = None
    endpoint_secret: str | None = None
    event_id: str | None = None
    ca_bundle: str | None = None
    profile_path: Path | None = None


Report = Callable[[Finding], None]


@dataclass
class _Run:
    client: OpenPSE
    base_url: str
    options: Options
    report: Report
    date_skew_s: float | None = None  # local minus server, from the Date header

    def add(self, status: str, check: str, detail: str, fix: str | None = None) -> None:
        self.report(Finding(status, check, detail, fix))


def run(client: OpenPSE, base_url: str, options: Options, report: Report) -> None:
    """Run every check, reporting each finding as soon as it is known."""
    r = _Run(client, base_url, options, report)
    _check_profile(r)
    if _check_server(r):
        me = _check_key(r)
        if me is not None:
            _check_mode(r, me)
            _check_key_state(r, me)
            _check_endpoints(r, bool(me["livemode"]))
    else:
        r.add(SKIP, "access key", "not checked: the server did not answer")
    _check_conformance(r)


# ---- local configuration and the server ------------------------------------------------------

def _check_profile(r: _Run) -> None:
    path = r.options.profile_path
    if path is None or not path.exists():
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        r.add(WARN, "profile", f"{path} is readable by others (mode {mode:04o}); it holds the "
              "secret", f"chmod 600 {path}")
    else:
        r.add(PASS, "profile", f"{path} is private (mode {mode:04o})")


def _check_server(r: _Run) -> bool:
    url = r.base_url.rstrip("/") + "/healthz"
    started = _now_s()
    try:
        answer = httpx.get(url, timeout=SERVER_TIMEOUT_S, headers={"user-agent": USER_AGENT})
    except httpx.HTTPError as exc:
        r.add(FAIL, "server", f"no answer from {r.base_url}: {type(exc).__name__}: {exc}",
              "check --base-url / OPENPSE_BASE_URL and that the server is running and "
              "reachable from this host")
        return False
    finished = _now_s()
    try:
        server_s = email.utils.parsedate_to_datetime(answer.headers["date"]).timestamp() + 0.5
        r.date_skew_s = (started + finished) / 2 - server_s  # Date has 1 s resolution
    except (KeyError, TypeError, ValueError, IndexError):
        r.date_skew_s = None
    latency_ms = int((finished - started) * 1000)
    if answer.status_code == httpx.codes.OK:
        r.add(PASS, "server", f"{r.base_url} answers (health OK in {latency_ms} ms)")
    else:
        r.add(WARN, "server", f"{r.base_url} answers, but /healthz is HTTP {answer.status_code}",
              "ask the operator: the server reports it is not healthy (database?)")
    return True


def _clock(r: _Run, skew_s: float | None, source: str) -> None:
    if skew_s is None:
        r.add(SKIP, "clock", "the server sent no Date header to compare with")
        return
    direction = "ahead of" if skew_s >= 0 else "behind"
    detail = f"this machine's clock is {abs(skew_s):.0f} s {direction} the server's ({source})"
    fix = ("synchronise the clock with NTP (e.g. timedatectl set-ntp true, or chronyd); "
           f"signed requests and webhook timestamps are accepted within ±{CLOCK_WINDOW_S} s")
    if abs(skew_s) > CLOCK_WINDOW_S:
        r.add(FAIL, "clock", detail + "; the server refuses every request", fix)
    elif abs(skew_s) > CLOCK_OK_S:
        r.add(WARN, "clock", detail, fix)
    else:
        r.add(PASS, "clock", detail)


# ---- the access key --------------------------------------------------------------------------

_KEY_FIXES: Final[dict[str, tuple[str, str]]] = {
    "unknown_access_key": (
        "the server does not know access key {key}",
        "check the key id and --base-url (a key of another server or database?); create a key "
        "with POST /v1/access_keys or `openpse keys create`"),
    "key_revoked": (
        "access key {key} is revoked (or its rotation overlap has ended)",
        "use the key that replaced it, or create a new one, and update your configuration "
        "(openpse login --key ... --secret ...)"),
    "invalid_signature": (
        "the secret does not match access key {key}",
        "use the secret shown when the key was created (it is shown once); if it is lost, "
        "rotate the key (POST /v1/access_keys/{key}/rotate) and use the new pair"),
    "merchant_not_active": (
        "the merchant of access key {key} is not active",
        "contact the operator of this OpenPSE server"),
}


def _ip_from_message(message: str) -> str:
    words = message.split()
    return words[2] if len(words) > 2 and words[:2] == ["requests", "from"] else "this host"


def _check_key(r: _Run) -> dict[str, Any] | None:
    key = r.client.access_key
    try:
        me = r.client.account.whoami()
    except NotFoundError:  # an older server without /v1/whoami
        try:
            account = r.client.account.retrieve()
        except OpenPSEError as exc:
            _key_refused(r, exc)
            return None
        me = {"access_key": key, "merchant": account.get("id"),
              "livemode": key.startswith("ak_live_"), "client_ip": None}
    except OpenPSEError as exc:
        _key_refused(r, exc)
        return None
    server_s = _parse_rfc3339(me.get("server_time"))
    skew_s = r.date_skew_s
    source = "Date header"
    if skew_s is None and server_s is not None:
        skew_s, source = _now_s() - server_s, "server_time"
    _clock(r, skew_s, source)
    r.add(PASS, "access key", f"{key} is valid (merchant {me.get('merchant')})")
    return me


def _key_refused(r: _Run, exc: OpenPSEError) -> None:
    key = r.client.access_key
    if isinstance(exc, AuthenticationError) and exc.code == "timestamp_out_of_window":
        skew = exc.clock_skew_s if exc.clock_skew_s is not None else r.date_skew_s
        _clock(r, skew if skew is not None else float(CLOCK_WINDOW_S + 1), "server's measure")
        r.add(SKIP, "access key", "not checked: the server refused the request's timestamp")
        return
    _clock(r, r.date_skew_s, "Date header")
    if exc.code == "ip_not_allowed":
        ip = _ip_from_message(exc.message)
        r.add(PASS, "access key", f"{key} is known and active (the server checks that before "
              "the address)")
        r.add(FAIL, "ip allowlist", f"this host ({ip}) is not in the IP allowlist of {key}",
              f"add {ip} to the key's ip_allowlist from an allowed host: openpse api POST "
              f"/v1/access_keys/{key} --data '{{\"ip_allowlist\": [\"{ip}/32\"]}}' (keep the "
              "other entries), or call from an allowed host. Behind a proxy, the server must "
              "trust it (OPENPSE_TRUSTED_PROXIES) or every client looks like the proxy")
        return
    if exc.code in _KEY_FIXES:
        detail, fix = _KEY_FIXES[str(exc.code)]
        r.add(FAIL, "access key", detail.format(key=key), fix.format(key=key))
        return
    r.add(FAIL, "access key", f"the server refused the key: HTTP {exc.http_status} "
          f"{exc.code}: {exc.message}", "see the message; docs/api.md lists every error code")


def _check_mode(r: _Run, me: dict[str, Any]) -> None:
    key, live = r.client.access_key, bool(me["livemode"])
    if live != key.startswith("ak_live_"):
        r.add(FAIL, "mode", f"{key} answers as {'live' if live else 'sandbox'}, unlike its "
              "prefix", "report this to the operator")
    elif not live:
        r.add(PASS, "mode", "sandbox key: test cards only, no real money moves")
    elif urlsplit(r.base_url).scheme != "https":
        r.add(FAIL, "mode", f"a live key is sent to {r.base_url} over plain HTTP",
              "use the server's https:// address for live traffic")
    else:
        r.add(PASS, "mode", "live key over https")


def _check_key_state(r: _Run, me: dict[str, Any]) -> None:
    key = r.client.access_key
    try:
        info = r.client.access_keys.retrieve(key)
    except OpenPSEError as exc:
        r.add(WARN, "key state", f"could not read the key: {exc.code}: {exc.message}")
        info = {"ip_allowlist": None}
    expires_s = _parse_rfc3339(info.get("expires_at"))
    if expires_s is not None:
        hours = max(0.0, (expires_s - _now_s()) / 3600)
        r.add(WARN, "key state", f"{key} was rotated and stops working at "
              f"{info['expires_at']} (in {hours:.1f} h)",
              f"switch to {info.get('replaced_by') or 'the new key'} before then")
    elif info.get("status") == "active":
        r.add(PASS, "key state", f"{key} is active and does not expire")
    _check_allowlist(r, me, info.get("ip_allowlist"))


def _check_allowlist(r: _Run, me: dict[str, Any], allowlist: list[str] | None) -> None:
    ip = me.get("client_ip") or "unknown"
    key = r.client.access_key
    if allowlist is None:
        r.add(SKIP, "ip allowlist", "not checked: the key could not be read")
        return
    if not allowlist:
        if me["livemode"]:
            r.add(WARN, "ip allowlist", f"any address may use live key {key} (this host is "
                  f"{ip})", "restrict the key to your servers' egress addresses: openpse api "
                  f"POST /v1/access_keys/{key} --data '{{\"ip_allowlist\": [\"{ip}/32\"]}}'")
        else:
            r.add(PASS, "ip allowlist", f"no allowlist: any address may use this sandbox key "
                  f"(this host is {ip})")
        return
    match = next((cidr for cidr in allowlist if _contains(cidr, ip)), None)
    if match:
        r.add(PASS, "ip allowlist", f"this host ({ip}) is allowed by {match}")
    else:  # the request went through, so the server saw an allowed address
        r.add(WARN, "ip allowlist", f"this host ({ip}) matches none of {', '.join(allowlist)}",
              "compare the allowlist with the address the server sees")


def _contains(cidr: str, ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


# ---- webhook endpoints -----------------------------------------------------------------------

def _check_endpoints(r: _Run, livemode: bool) -> None:
    try:
        endpoints = list(islice(r.client.webhook_endpoints.list_all(limit=100), MAX_ENDPOINTS))
    except OpenPSEError as exc:
        r.add(WARN, "webhook endpoints", f"could not list them: {exc.code}: {exc.message}")
        return
    if not endpoints:
        r.add(WARN, "webhook endpoints", "none: asynchronous outcomes (3-D Secure, vouchers, "
              "refunds, expiries) reach you only by webhook",
              "create one: openpse api POST /v1/webhook_endpoints --data '{\"url\": "
              "\"https://shop.example/webhooks\", \"enabled_events\": [\"*\"]}' (in development: "
              "openpse listen --forward-to http://localhost:PORT/...)")
        return
    for endpoint in endpoints:
        _check_endpoint(r, endpoint, livemode)


def _check_endpoint(r: _Run, endpoint: dict[str, Any], livemode: bool) -> None:
    url, name = str(endpoint["url"]), f"endpoint {endpoint['id']}"
    parts = urlsplit(url)
    if endpoint.get("status") != "enabled":
        r.add(FAIL, name, f"{url} is {endpoint.get('status')} "
              f"({endpoint.get('disabled_reason') or 'no reason given'}): nothing is delivered",
              "fix the handler, then enable it again: openpse api PATCH "
              f"/v1/webhook_endpoints/{endpoint['id']} --data '{{\"enabled\": true}}'")
    if livemode and parts.scheme != "https":
        r.add(FAIL, name, f"{url}: live endpoints must use https", "serve the handler over "
              "https with a certificate from a public CA")
    _check_reachable(r, name, url)
    _check_last_delivery(r, name, endpoint)


def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


def _check_reachable(r: _Run, name: str, url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    started = _now_s()
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as sock:
            if parts.scheme != "https":
                r.add(PASS, name, f"{url} is reachable from here (TCP connect in "
                      f"{int((_now_s() - started) * 1000)} ms)")
                return
            context = _ssl_context(r.options.ca_bundle)
            with context.wrap_socket(sock, server_hostname=host) as tls:
                cert = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        r.add(FAIL, name, f"{url}: TLS certificate not valid: {exc.verify_message or exc}",
              f"serve a certificate for {host} from a public CA (e.g. Let's Encrypt) with its "
              "full chain; the server refuses deliveries it cannot verify")
        return
    except ssl.SSLError as exc:
        r.add(FAIL, name, f"{url}: TLS handshake failed: {exc}",
              "check the server's TLS configuration (protocol versions, certificate)")
        return
    except OSError as exc:
        r.add(FAIL, name, f"{url} is not reachable from here: {exc}",
              "start the handler, and make sure the OpenPSE server can reach it (firewall, "
              "DNS, port); in development use openpse listen instead")
        return
    _report_certificate(r, name, url, cert)


def _report_certificate(r: _Run, name: str, url: str, cert: dict[str, Any]) -> None:
    not_after = cert.get("notAfter")
    if not isinstance(not_after, str):
        r.add(WARN, name, f"{url}: reachable over TLS, but the certificate has no expiry date")
        return
    expires_s = ssl.cert_time_to_seconds(not_after)
    days = int((expires_s - _now_s()) // SECONDS_PER_DAY)
    if days < CERT_WARN_DAYS:
        r.add(WARN, name, f"{url}: TLS certificate expires in {days} day(s) ({not_after})",
              "renew it now and automate renewal (e.g. certbot renew, any ACME client)")
    else:
        r.add(PASS, name, f"{url}: reachable, TLS certificate valid for {days} more days "
              f"(until {not_after})")


def _check_last_delivery(r: _Run, name: str, endpoint: dict[str, Any]) -> None:
    try:
        page = r.client.webhook_endpoints.list_deliveries(endpoint["id"], limit=1)
    except OpenPSEError:
        return
    if not page.get("data"):
        return
    last = page["data"][0]
    code = last.get("last_status_code")
    if last.get("status") == "succeeded":
        r.add(PASS, name, f"last delivery ({last.get('event')}) succeeded with HTTP {code}")
    elif last.get("attempt_count"):
        what = f"HTTP {code}" if code else (last.get("last_error") or "no answer")
        r.add(WARN, name, f"last delivery ({last.get('event')}) is {last.get('status')}: {what}",
              f"see openpse api GET /v1/webhook_endpoints/{endpoint['id']}/deliveries; once "
              f"fixed, openpse api POST /v1/events/{last.get('event')}/redeliver")


# ---- conformance of a webhook handler --------------------------------------------------------

def _probe_event(r: _Run) -> tuple[str, bytes] | None:
    """The event the conformance run sends: a real one if asked for, else a synthetic ping."""
    if r.options.event_id:
        try:
            event = r.client.events.retrieve(r.options.event_id)
        except OpenPSEError as exc:
            r.add(FAIL, "conformance", f"cannot read event {r.options.event_id}: {exc.message}",
                  "give an event id of this key's merchant and mode (openpse api GET /v1/events)")
            return None
    else:
        suffix = secrets.token_hex(8)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_now_s()))
        event = {"id": f"evt_doctor_{suffix}", "object": "event", "type": "doctor.ping",
                 "created": created, "livemode": r.client.access_key.startswith("ak_live_"),
                 "data": {"object": {"id": f"doctor_{suffix}", "object": "doctor_ping",
                                     "version": 1}, "previous_attributes": {}},
                 "request": None}
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return str(event["id"]), body


@dataclass(frozen=True)
class _Answer:
    status: int | None
    elapsed_s: float
    excerpt: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.error})"
        text = f"HTTP {self.status} in {int(self.elapsed_s * 1000)} ms"
        return text + (f" ({self.excerpt})" if self.excerpt and not self.ok else "")


def _send(http: httpx.Client, url: str, msg_id: str, body: bytes, secret: str,
          timestamp_s: int) -> _Answer:
    headers = webhooks.signed_headers(body, secret, msg_id=msg_id, timestamp_s=timestamp_s)
    headers.update({"content-type": "application/json", "user-agent": USER_AGENT})
    started = time.perf_counter()
    try:
        answer = http.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return _Answer(None, time.perf_counter() - started, "", f"{type(exc).__name__}: {exc}")
    excerpt = answer.text[:EXCERPT_CHARS].replace("\n", " ")
    return _Answer(answer.status_code, time.perf_counter() - started, excerpt)


def _check_conformance(r: _Run) -> None:
    url, secret = r.options.endpoint, r.options.endpoint_secret
    if not url:
        r.add(SKIP, "conformance", "no --endpoint: run doctor --endpoint URL [--endpoint-secret "
              "whsec_...] to test a webhook handler")
        return
    try:
        if not secret:
            raise ValueError("no secret")
        webhooks.sign(b"", secret, msg_id="probe", timestamp_s=0)
    except ValueError:
        r.add(FAIL, "conformance", f"no usable secret for {url}",
              "pass --endpoint-secret whsec_... (the secret that handler verifies with), or "
              "run openpse listen once to create the local one")
        return
    assert secret is not None
    probe = _probe_event(r)
    if probe is None:
        return
    msg_id, body = probe
    wrong = webhooks.SECRET_PREFIX + "d3JvbmctZG9jdG9yLXNlY3JldC1mb3ItcHJvYmluZyE="
    now = int(_now_s())
    with httpx.Client(timeout=DELIVERY_LIMIT_S, follow_redirects=False,
                      verify=_ssl_context(r.options.ca_bundle)) as http:
        first = _send(http, url, msg_id, body, secret, now)
        _judge_first(r, url, first)
        forged = _send(http, url, _fresh_id(), body, wrong, now)
        stale = _send(http, url, _fresh_id(), body, secret, now - PROBE_SKEW_S)
        future = _send(http, url, _fresh_id(), body, secret, now + PROBE_SKEW_S)
        duplicate = _send(http, url, msg_id, body, secret, int(_now_s()))
    verify_fix = ("verify every delivery before acting on it: event = openpse_sdk.webhooks."
                  "verify(raw_body, headers, secret); answer 400 when it raises")
    _judge_refusal(r, "wrong signature", "signed with another secret", forged, verify_fix)
    _judge_refusal(r, "stale timestamp", f"signed {PROBE_SKEW_S} s ago (a replay)", stale,
                   verify_fix + f" (it refuses timestamps more than {CLOCK_WINDOW_S} s old)")
    _judge_refusal(r, "future timestamp", f"signed {PROBE_SKEW_S} s in the future", future,
                   verify_fix + f" (it refuses timestamps more than {CLOCK_WINDOW_S} s ahead)")
    if duplicate.ok:
        r.add(PASS, "conformance", f"duplicate delivery acknowledged: {duplicate.describe()}")
    else:
        r.add(FAIL, "conformance", f"a redelivery of the same event was refused: "
              f"{duplicate.describe()}; the server would retry it for days",
              "deliveries are at-least-once: when the event id was handled already, do nothing "
              "and answer 2xx")


def _fresh_id() -> str:
    return f"evt_doctor_{secrets.token_hex(8)}"


def _judge_first(r: _Run, url: str, answer: _Answer) -> None:
    if answer.ok and answer.elapsed_s > SLOW_ANSWER_S:
        r.add(WARN, "conformance", f"signed event accepted, but slowly: {answer.describe()}",
              f"answer within seconds (the limit is {DELIVERY_LIMIT_S:.0f} s): acknowledge "
              "first, do slow work afterwards (a queue)")
    elif answer.ok:
        r.add(PASS, "conformance", f"signed event accepted: {answer.describe()}")
    elif answer.status is None:
        r.add(FAIL, "conformance", f"signed event to {url}: {answer.describe()}",
              f"the handler must answer 2xx within {DELIVERY_LIMIT_S:.0f} s: start it, "
              "acknowledge first and do slow work afterwards")
    elif 300 <= answer.status < 400:
        r.add(FAIL, "conformance", f"signed event answered with a redirect: {answer.describe()}",
              "redirects are failures and are never followed: register the final URL")
    else:
        r.add(FAIL, "conformance", f"a correctly signed event was refused: {answer.describe()}",
              "verify the raw body bytes (not re-serialised JSON) with this endpoint's secret, "
              "and answer 2xx for event types you do not handle")


def _judge_refusal(r: _Run, what: str, how: str, answer: _Answer, fix: str) -> None:
    if answer.ok:
        r.add(FAIL, "conformance", f"{what}: an event {how} was accepted "
              f"({answer.describe()})", fix)
    else:
        r.add(PASS, "conformance", f"{what}: refused ({answer.describe()})")


def _parse_rfc3339(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None
