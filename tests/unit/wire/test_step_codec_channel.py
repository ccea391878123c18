"""RingChannel's step codec methods: compact records mixed in order with msgpack messages,
a full ring (a deadline, then room), stale answers skipped, closed channels and the layout rules."""

from __future__ import annotations

import threading
import time

import pytest

from rlmesh import spaces
from rlmesh.errors import BrokenError, ClosedError, OperationTimeout
from rlmesh.specs import SHM_INLINE_LIMIT, EnvContract
from rlmesh.wire.channel import RingChannel
from rlmesh.wire.step_codec import step_layout
from tests.unit.wire.test_channel_conformance import ring_maker


def rings():  # type: ignore[no-untyped-def]
    return ring_maker()()


def test_compact_and_msgpack_messages_keep_their_order() -> None:
    with rings() as (client, server):
        assert isinstance(client, RingChannel) and isinstance(server, RingChannel)
        client.send(b"\x92\x0d\x01")  # a msgpack request first
        client.send_step(2, 1, 8, 1.0)
        assert server.recv_step(8, True, 1.0) is None  # not compact: left for recv
        message = server.recv(1.0)
        assert bytes(message.head) == b"\x92\x0d\x01"
        message.done()
        assert server.recv_step(8, True, 1.0) == (2, 1)
        server.send_ok(2, 0.5, False, True, b"\1\2\3\4", 4)
        server.send(b"\xc0")
        assert client.recv_ok(4, False, 1.0) == (2, 0.5, False, True, bytearray(b"\1\2\3\4"))
        assert client.recv_ok(4, False, 1.0) is None
        message = client.recv(1.0)
        assert bytes(message.head) == b"\xc0"
        message.done()


def test_waiting_for_a_compact_record_has_a_deadline_and_wakes_for_one() -> None:
    with rings() as (client, server):
        start = time.monotonic()
        with pytest.raises(OperationTimeout):
            client.recv_ok(8, True, 0.1)
        assert 0.05 < time.monotonic() - start < 2
        threading.Timer(0.1, lambda: server.send_ok(1, 1.0, False, False, 7, 8)).start()
        assert client.recv_ok(8, True, 5.0) == (1, 1.0, False, False, 7)


def test_a_full_ring_waits_for_room_until_the_deadline() -> None:
    with rings() as (client, server):
        sent = 0
        with pytest.raises(OperationTimeout):
            while True:
                client.send_step(sent, b"\0" * 1000, 1000, 0.05)
                sent += 1
        assert sent > 10
        # Once the server reads, the blocked send goes through.
        threading.Timer(0.1, lambda: server.recv_step(1000, False, 1.0)).start()
        client.send_step(sent, b"\0" * 1000, 1000, 5.0)


def test_stale_compact_answers_are_skipped_only_by_a_client_that_expects_them() -> None:
    with rings() as (client, server):
        server.send_ok(1, 1.0, False, False, 5, 8)
        server.send(b"\xc3")
        with pytest.raises(BrokenError, match="did not agree"):
            client.recv(1.0)
    with rings() as (client, server):
        client.skip_compact = True
        for rid in range(3):
            server.send_ok(rid, 1.0, False, False, 5, 8)
        server.send(b"\xc3")
        message = client.recv(1.0)
        assert bytes(message.head) == b"\xc3"
        message.done()
        # Only stale answers and no message: the caller's deadline holds.
        server.send_ok(9, 1.0, False, False, 5, 8)
        start = time.monotonic()
        with pytest.raises(OperationTimeout):
            client.recv(0.1)
        assert time.monotonic() - start < 2


def test_a_closed_channel_refuses_the_codec_calls() -> None:
    with rings() as (client, server):
        client.close()
        with pytest.raises(ClosedError):
            client.send_step(1, 1, 8, 1.0)
        with pytest.raises(ClosedError):
            client.recv_ok(8, True, 1.0)
        with pytest.raises(BrokenError):
            server.recv_step(8, True, 1.0)  # the client closed its end: nothing more will come


def test_the_layout_covers_single_envs_with_fixed_small_leaves_only() -> None:
    def contract(obs: spaces.Space, act: spaces.Space, n: int = 1) -> EnvContract:
        return EnvContract("x", obs, act, num_envs=n)

    box = spaces.Box(-1, 1, (4,), "float32")
    layout = step_layout(contract(box, spaces.Discrete(3)))
    assert layout is not None and (layout.obs_nbytes, layout.action_nbytes, layout.action_discrete) == (
        16,
        8,
        True,
    )
    layout = step_layout(contract(spaces.Discrete(5), spaces.Box(-2, 2, (1,), "float32")))
    assert layout is not None and layout.obs_discrete and layout.action_shape == (1,)
    assert step_layout(contract(box, spaces.Discrete(3), n=2)) is None  # a vector endpoint
    assert step_layout(contract(spaces.Dict({"a": box}), spaces.Discrete(3))) is None
    big = spaces.Box(0, 255, (SHM_INLINE_LIMIT,), "uint8")  # a slab block's size
    assert step_layout(contract(big, spaces.Discrete(2))) is None
    small = spaces.Box(0, 255, (SHM_INLINE_LIMIT - 1,), "uint8")
    assert step_layout(contract(small, spaces.Discrete(2))) is not None
    assert step_layout(contract(box, spaces.Text(5))) is None
