"""TCP sockets get rlmesh's keep-alive timings; a wildcard listener reports a dialable address."""

from __future__ import annotations

import ipaddress
import socket

from rlmesh.net import listener as N, stream as S
from rlmesh.net.address import Address


def test_tcp_streams_on_both_sides_get_short_keepalive() -> None:
    with N.Listener(Address("tcp", host="127.0.0.1", port=0)) as listener:
        client = S.connect(listener.address, timeout=5.0)
        accepted = listener.accept(5.0)
        assert accepted is not None
        server = S.SocketStream(accepted)
        try:
            for stream in (client, server):
                sock = stream._sock
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == S.KEEPALIVE_IDLE
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == S.KEEPALIVE_INTERVAL
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == S.KEEPALIVE_COUNT
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            # A silent idle host is given up within idle + interval * count seconds.
            assert S.KEEPALIVE_IDLE + S.KEEPALIVE_INTERVAL * S.KEEPALIVE_COUNT <= 3
        finally:
            client.close()
            server.close()


def test_a_specific_host_is_bound_exactly_and_reported_as_is() -> None:
    with N.Listener(Address("tcp", host="127.0.0.1", port=0)) as listener:
        assert listener.address.host == "127.0.0.1"
        assert listener.bound == listener.address
        assert listener._sock.getsockname()[0] == "127.0.0.1"


def test_a_wildcard_listener_reports_an_address_a_client_can_dial() -> None:
    with N.Listener(Address("tcp", host="0.0.0.0", port=0)) as listener:
        assert listener.bound.host == "0.0.0.0"
        host = listener.address.host
        assert host is not None and host != "0.0.0.0"
        ipaddress.ip_address(host)  # an IP, not a wildcard or a name
        assert listener.address.port == listener.bound.port
        # The reported address reaches this very listener.
        client = S.connect(listener.address, timeout=5.0)
        try:
            accepted = listener.accept(5.0)
            assert accepted is not None
            accepted.close()
        finally:
            client.close()


def test_dialable_host_keeps_specific_addresses() -> None:
    assert N.dialable_host("10.1.2.3") == "10.1.2.3"
    assert N.dialable_host("::1") == "::1"
    assert N.dialable_host("myhost.example") == "myhost.example"
