"""Logs and metrics (CONTRACT §1, §9; RELIABILITY 1): card numbers, CVCs and secrets never reach
the log file or the request log, every log line is JSON with the request id, and /metrics
exposes latency per route template, responses per status and auth failures per code."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from openpse.storage.tables import request_logs
from tests.support.api_asserts import eventually
from tests.support.signer import sign_headers

PAN = "4242424242424242"
PAN_SPACED = "4000 0000 0000 3220"
CVC = "8317"


def _sensitive_requests(merchant) -> tuple[list[str], str]:
    """Requests carrying a PAN, a CVC and a fresh secret; returns their request ids and the
    secret."""
    raw = merchant.raw()
    card = {"number": PAN, "cvc": CVC, "exp_month": 12, "exp_year": 2034}
    responses = [
        raw.post("/v1/access_keys", {"payment_method": {"type": "card", "card": card}}),
        raw.post("/v1/access_keys", {"description": f"card {PAN} / {PAN_SPACED} cvc {CVC}"}),
        raw.post("/v1/card_probe", {"card": card}),
        raw.get(f"/v1/request_logs?note={PAN}&limit=1"),
        raw.request("POST", "/v1/access_keys",
                    raw_body=f'{{"broken": "{PAN}", "cvc": "{CVC}"'.encode()),
    ]
    statuses = [r.status_code for r in responses]
    assert statuses == [400, 201, 404, 200, 400], [r.text for r in responses]
    created = responses[1].json()
    assert PAN in created["description"]  # echoed to its owner, but never logged
    issued = raw.post("/v1/access_keys", {"description": "logs"})
    assert issued.status_code == 201
    responses.append(issued)
    return [r.headers["x-request-id"] for r in responses], issued.json()["secret"]


def _assert_clean(text: str, secret: str) -> None:
    for needle in (PAN, PAN_SPACED, f'"{CVC}"', secret, secret.removeprefix("sk_test_")):
        assert needle not in text, f"{needle!r} leaked: ...{text[text.find(needle) - 200:][:400]}"


def _assert_rows_clean(rows: list[dict], secret: str) -> None:
    """Each stored text on its own (JSON-encoding the rows would escape the quotes we look for)."""
    for row in rows:
        for value in row.values():
            _assert_clean(str(value), secret)


def test_log_file_is_json_with_request_ids_and_no_secrets(merchant, server):
    ids, secret = _sensitive_requests(merchant)

    def _lines() -> list[dict]:
        lines = [json.loads(line) for line in server.log_file.read_text().splitlines()
                 if line.strip()]
        assert {r.get("request_id") for r in lines} >= set(ids)
        return lines

    lines = eventually(_lines)
    _assert_clean(server.log_file.read_text(), secret)
    requests = [r for r in lines if r.get("event") == "request"]
    assert requests
    for r in requests:
        assert r["request_id"].startswith("req_"), r
        assert {"method", "path", "status", "duration_ms", "level", "timestamp"} <= set(r)
    ours = {r["request_id"]: r for r in requests if r["request_id"] in ids}
    assert ours[ids[0]]["status"] == 400 and ours[ids[0]]["error_code"] == "parameter_unknown"
    assert ours[ids[1]]["merchant_id"] == merchant.merchant_id


async def test_request_log_api_and_table_hold_no_card_data_or_secrets(merchant, services):
    ids, secret = _sensitive_requests(merchant)
    raw = merchant.raw()

    def _listed() -> list[dict]:
        rows = raw.get("/v1/request_logs?limit=100").json()["data"]
        assert set(ids) <= {r["id"] for r in rows}
        return rows

    rows = eventually(_listed)
    _assert_rows_clean(rows, secret)
    by_id = {r["id"]: r for r in rows}
    first = by_id[ids[0]]
    assert first["status"] == 400 and first["error_code"] == "parameter_unknown"
    assert json.loads(first["request_body"])["payment_method"]["card"] == {
        "number": "[REDACTED]", "cvc": "[REDACTED]", "exp_month": 12, "exp_year": 2034}
    assert by_id[ids[-1]]["response_body"] and "[REDACTED]" in by_id[ids[-1]]["response_body"]
    assert "424242******4242" in by_id[ids[1]]["request_body"]
    assert by_id[ids[3]]["query"].startswith("note=424242******4242")
    assert "not stored" in by_id[ids[4]]["request_body"]  # free text: no way to find a CVC

    async with services.db.read() as conn:
        found = (await conn.execute(select(request_logs).where(request_logs.c.id.in_(ids)))).all()
    assert len(found) == len(ids)
    _assert_rows_clean([dict(r._mapping) for r in found], secret)


def test_request_log_rows_carry_the_request_context(merchant):
    raw = merchant.raw()
    res = raw.get("/v1/account", headers={"Idempotency-Key": "ignored-on-get"})
    rid = res.headers["x-request-id"]

    def _row() -> dict:
        rows = raw.get("/v1/request_logs?limit=5").json()["data"]
        match = [r for r in rows if r["id"] == rid]
        assert match
        return match[0]

    row = eventually(_row)
    assert row["object"] == "request_log" and row["livemode"] is False
    assert row["method"] == "GET" and row["path"] == "/v1/account" and row["status"] == 200
    assert row["access_key_id"] == merchant.access_key and row["client_ip"] == "127.0.0.1"
    assert row["created"].endswith("Z") and row["error_code"] is None


# ---- metrics ------------------------------------------------------------------------------------


def _samples(base_url: str) -> list:
    res = httpx.get(base_url + "/metrics")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/plain")
    return [s for fam in text_string_to_metric_families(res.text) for s in fam.samples]


def _value(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_latency_is_labelled_by_route_template(merchant, server):
    raw = merchant.raw()
    assert raw.get("/v1/account").status_code == 200
    raw.get("/v1/access_keys/ak_test_notmine0000000000000")
    httpx.get(server.base_url + "/no/such/page/12345")
    samples = _samples(server.base_url)
    counts = {s.labels["route"] for s in samples
              if s.name == "openpse_http_request_duration_seconds_count"}
    assert "/v1/account" in counts and "/v1/access_keys/{key_id}" in counts
    assert not any("ak_test_" in r or "12345" in r for r in counts), counts
    assert _value(samples, "openpse_http_request_duration_seconds_count",
                  route="/v1/account", method="GET") >= 1
    buckets = [s for s in samples if s.name == "openpse_http_request_duration_seconds_bucket"
               and s.labels["route"] == "/v1/account"]
    assert buckets and buckets[-1].labels["le"] == "+Inf"


def test_responses_are_counted_by_status(merchant, server):
    before = _samples(server.base_url)
    merchant.raw().get("/v1/account")
    merchant.raw().get("/v1/nope")
    after = _samples(server.base_url)
    for status in ("200", "404"):
        assert (_value(after, "openpse_http_responses_total", status=status)
                > _value(before, "openpse_http_responses_total", status=status))


def test_auth_failures_are_counted_by_code(merchant, server):
    name = "openpse_auth_failures_total"
    before = _samples(server.base_url)
    headers = sign_headers("GET", server.base_url + "/v1/account", b"", merchant.access_key,
                           "sk_test_wrong")
    assert httpx.get(server.base_url + "/v1/account", headers=headers).status_code == 401
    assert httpx.get(server.base_url + "/v1/account").status_code == 401
    after = _samples(server.base_url)
    assert (_value(after, name, code="invalid_signature")
            == _value(before, name, code="invalid_signature") + 1)
    assert (_value(after, name, code="missing_signature")
            == _value(before, name, code="missing_signature") + 1)
