from __future__ import annotations

import pytest

from rlmesh.net.address import Address, parse_address, resolve_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"),
        ("127.0.0.1:5555", "tcp://127.0.0.1:5555"),
        ("localhost:80", "tcp://localhost:80"),
        ("http://10.0.0.1:50051", "tcp://10.0.0.1:50051"),
        ("TCP://host:1/", "tcp://host:1"),
        ("[::1]:9000", "tcp://[::1]:9000"),
        ("tcp://[::1]:9000", "tcp://[::1]:9000"),
        ("unix:///tmp/env.sock", "unix:///tmp/env.sock"),
        ("/tmp/env.sock", "unix:///tmp/env.sock"),
    ],
)
def test_client_address_forms(text: str, expected: str) -> None:
    assert str(parse_address(text)) == expected


def test_bind_only_forms() -> None:
    assert str(parse_address("5555", for_bind=True)) == "tcp://127.0.0.1:5555"
    with pytest.raises(ValueError):
        parse_address("5555")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "host",
        "host:",
        ":80",
        "host:abc",
        "host:70000",
        "ftp://h:1",
        "unix://",
        "::1:80",
        "unix:///" + "x" * 200,
    ],
)
def test_invalid_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_helpers() -> None:
    assert str(resolve_address(host="10.0.0.2", port=7)) == "tcp://10.0.0.2:7"
    assert str(resolve_address(port=7)) == "tcp://127.0.0.1:7"
    assert str(resolve_address(path="/tmp/a.sock")) == "unix:///tmp/a.sock"
    assert str(resolve_address(path="/tmp/a.sock", transport="unix")) == "unix:///tmp/a.sock"
    assert resolve_address(Address("unix", path="/x")) == Address("unix", path="/x")
    assert str(resolve_address(default="tcp://127.0.0.1:0", for_bind=True)) == "tcp://127.0.0.1:0"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"address": "h:1", "port": 2}, ValueError, "cannot be combined"),
        ({"address": "h:1", "transport": "tcp"}, ValueError, "cannot be combined"),
        ({"host": "h"}, ValueError, "port is required"),
        ({"port": "80"}, TypeError, "int"),
        ({"port": True}, TypeError, "int"),
        ({"port": -1}, ValueError, "0..65535"),
        ({"path": "/a", "port": 1}, ValueError, "path cannot"),
        ({"transport": "udp", "port": 1}, ValueError, "transport"),
        ({"transport": "unix", "port": 1}, ValueError, "needs path"),
        ({"transport": "tcp", "path": "/a"}, ValueError, "host and port"),
        ({"transport": "tcp"}, ValueError, "needs host and port"),
        ({}, ValueError, "no address"),
    ],
)
def test_helper_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_address(**kwargs)


def test_loopback_detection() -> None:
    assert parse_address("127.0.0.1:1").is_loopback and parse_address("localhost:1").is_loopback
    assert parse_address("[::1]:1").is_loopback and parse_address("unix:///a").is_loopback
    assert not parse_address("10.1.2.3:1").is_loopback and not parse_address("example.org:1").is_loopback
