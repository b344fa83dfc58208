"""Pure parts of request authentication: whose address a request comes from, and how a bad
X-PSE-Timestamp is explained (CONTRACT §2; RELIABILITY 5, 7, 9)."""

from __future__ import annotations

import ipaddress

import pytest

from openpse.api.auth import client_ip, parse_timestamp
from openpse.domain.errors import AuthenticationFailed

NOW = 1763773200.0  # 2025-11-22T01:00:00Z
WINDOW = 300
PROXIES = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8")]


@pytest.mark.parametrize("peer, xff, trusted, expected", [
    ("198.51.100.7", None, [], "198.51.100.7"),
    ("198.51.100.7", "203.0.113.9", [], "198.51.100.7"),  # untrusted peer: header ignored
    ("127.0.0.1", "203.0.113.9", [], "127.0.0.1"),  # nobody trusted by default
    ("127.0.0.1", "203.0.113.9", PROXIES, "203.0.113.9"),
    ("127.0.0.1", "203.0.113.9, 10.1.1.1", PROXIES, "203.0.113.9"),  # trusted hops skipped
    ("127.0.0.1", "203.0.113.9, 198.51.100.7", PROXIES, "198.51.100.7"),  # left part is forged
    ("127.0.0.1", "10.1.1.1, 10.2.2.2", PROXIES, "10.1.1.1"),
    ("127.0.0.1", " , ", PROXIES, "127.0.0.1"),
    ("127.0.0.1", "not-an-ip", PROXIES, "not-an-ip"),
    (None, "203.0.113.9", PROXIES, None),
])
def test_client_ip(peer, xff, trusted, expected):
    assert client_ip(peer, xff, trusted) == expected


def test_garbage_forwarded_address_never_matches_an_allowlist():
    from openpse.api.auth import _in_any

    ip = client_ip("127.0.0.1", "not-an-ip", PROXIES)
    assert not _in_any(ip or "", [ipaddress.ip_network("0.0.0.0/0")])


@pytest.mark.parametrize("offset_s", [0, -300, 300, -299, 299])
def test_timestamp_inside_window(offset_s):
    assert parse_timestamp(str(int(NOW) + offset_s), NOW, WINDOW) == int(NOW) + offset_s


@pytest.mark.parametrize("offset_s, word", [(-301, "behind"), (301, "ahead of"),
                                            (-360, "behind"), (360, "ahead of")])
def test_timestamp_outside_window_names_server_time_and_skew(offset_s, word):
    with pytest.raises(AuthenticationFailed) as info:
        parse_timestamp(str(int(NOW) + offset_s), NOW, WINDOW)
    err = info.value
    assert err.code == "timestamp_out_of_window"
    assert f"{abs(offset_s)} s {word} the server" in err.message
    assert "2025-11-22T01:00:00Z" in err.message and "±300 s" in err.message
    assert err.extra == {"server_time": "2025-11-22T01:00:00Z", "skew_seconds": offset_s}


@pytest.mark.parametrize("value, hint", [
    (str(int(NOW) * 1000), "milliseconds"),
    ("2025-11-22T10:00:00+08:00", "formatted date"),
    ("2025-11-22T01:00:00Z", "formatted date"),
    ("1763773200.25", "without a fraction"),
    ("9" * 5000, "whole seconds"),
    ("", "whole seconds"),
    ("١٧٦٣٧٧٣٢٠٠", "whole seconds"),  # Arabic-Indic digits are not ASCII seconds
])
def test_malformed_timestamps_say_why(value, hint):
    with pytest.raises(AuthenticationFailed) as info:
        parse_timestamp(value, NOW, WINDOW)
    assert info.value.code == "timestamp_out_of_window"
    assert hint in info.value.message
    assert "2025-11-22T01:00:00Z" in info.value.message
