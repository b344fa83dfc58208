"""Property-based API testing of the live server from its own /openapi.json (RELIABILITY 26).

Every generated request is signed the way a merchant's client signs it (method, the path as
sent, the query, the body bytes), so the checks see the API behind authentication: no 5xx, and
status codes, content types and bodies as the schema declares them.
"""

from __future__ import annotations

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import MerchantKit, new_merchant
from tests.support.signer import sign_headers

MAX_EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10}  # per operation
# Every check runs except "schema-valid data must be accepted": the API's rules are stricter
# than JSON Schema can say (CIDR blocks, ISO 4217 codes, RFC 3339 filters, no NUL, 1453.0 is
# not an integer amount), so schema-valid input may rightly get a 400.


class SignedAuth(requests.auth.AuthBase):
    """Signs the prepared request, i.e. exactly the bytes that go on the wire, when it carries
    our access key: schemathesis' own probes without it or with a forged one stay unsigned."""

    def __init__(self, kit: MerchantKit) -> None:
        self.kit = kit

    def __call__(self, req: requests.PreparedRequest) -> requests.PreparedRequest:
        if req.headers.get("X-PSE-Access-Key") != self.kit.access_key:
            return req
        body = req.body or b""
        if isinstance(body, str):
            body = body.encode()
        req.headers.update(sign_headers(req.method or "GET", req.url or "", body,
                                        self.kit.access_key, self.kit.secret))
        return req


@pytest.fixture
async def fuzz_kit(services, server) -> MerchantKit:
    return await new_merchant(services, server.base_url, rate_limit_per_s=0)


@pytest.fixture
def api_schema(server, fuzz_kit):
    schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
    schema.config.update(base_url=server.base_url)

    @schema.auth(refresh_interval=None)
    class AccessKeyHeader:
        """Marks each case as carrying our key; SignedAuth adds the signature at send time."""

        def get(self, case, ctx):
            return fuzz_kit.access_key

        def set(self, case, data, ctx):
            case.headers = {**(case.headers or {}), "X-PSE-Access-Key": data}

    return schema


def _fuzz(operation, mode: GenerationMode, session: requests.Session) -> None:
    @settings(max_examples=MAX_EXAMPLES[mode], deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(case=operation.as_strategy(generation_mode=mode, auth_storage=operation.schema.auth))
    def run(case) -> None:
        case.call_and_validate(session=session, excluded_checks=[positive_data_acceptance])

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_schema(api_schema, fuzz_kit, mode):
    # schemathesis' own pytest plugin does not run on pytest 9 (Function._nodeid is gone), so
    # each operation gets its Hypothesis test here; every failure is reported, by operation.
    session = requests.Session()
    session.auth = SignedAuth(fuzz_kit)
    failures: dict[str, str] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        try:
            _fuzz(operation, mode, session)
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to make invalid
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a Base...
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:3000]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_signing_is_never_ignored(server):
    """The schema says every /v1 operation needs a signed request; none answers without one."""
    doc = httpx.get(server.base_url + "/openapi.json").json()
    for path, operations in doc["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in operations.items():
            assert op.get("security"), (method, path)
            concrete = path.replace("{", "x_").replace("}", "")
            res = httpx.request(method.upper(), server.base_url + concrete, json={})
            assert res.status_code == 401, (method, path, res.status_code)
            assert res.json()["error"]["code"] == "missing_signature"
