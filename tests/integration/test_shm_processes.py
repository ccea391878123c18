"""The shared-memory data plane across real processes (spawn and forkserver).

Every test has a hard deadline (pytest-timeout, join timeouts, a timeout on
every blocking call) and kills its children in ``finally``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import struct
import time
from collections.abc import Iterator
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import _shm_peers as peers
import pytest

from rlmesh.errors import BrokenError, OperationTimeout, WouldBlock
from rlmesh.shm import Segment, SpinPolicy, janitor

START_METHODS = ["spawn", "forkserver"]
JOIN_TIMEOUT = 30.0


@pytest.fixture(scope="module", autouse=True)
def multiprocessing_helpers() -> None:
    # The forkserver and the resource tracker are long-lived children of this
    # process; start them before the per-test leak check takes its snapshot.
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    forkserver.ensure_running()


@pytest.fixture
def children() -> Iterator[list[BaseProcess]]:
    """Processes a test starts; whatever is still alive at the end is killed."""
    procs: list[BaseProcess] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=JOIN_TIMEOUT)
            proc.close()


def start(procs: list[BaseProcess], method: str, target: Any, *args: Any) -> BaseProcess:
    ctx: BaseContext = mp.get_context(method)
    proc = ctx.Process(target=target, args=args, daemon=True)  # type: ignore[attr-defined]
    procs.append(proc)
    proc.start()
    return proc


def join_ok(proc: BaseProcess) -> None:
    proc.join(timeout=JOIN_TIMEOUT)
    assert proc.exitcode == 0, f"child exited with {proc.exitcode}"


# -- zero-copy payloads through slots, handles through rings -------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", START_METHODS)
def test_consumer_process_reads_checksummed_payloads_zero_copy(
    method: str, children: list[BaseProcess]
) -> None:
    capacity = 4096
    sizes = peers.payload_sizes(seed=11, count=30)
    with peers.create_channel(capacity) as channel:
        requests, responses = peers.channel_rings(channel, capacity, SpinPolicy())
        proc = start(children, method, peers.consumer_child, channel.name, capacity)
        stats = peers.run_producer(requests, responses, sizes, seed=12)
        join_ok(proc)
        del requests, responses
    assert stats["sent"] == stats["released"] == stats["done"] == len(sizes)
    assert 1 <= stats["segments"] <= 3  # a few slab segments, never one per payload


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", START_METHODS)
def test_producer_process_owns_the_slab_and_the_channel(method: str, children: list[BaseProcess]) -> None:
    capacity = 4096
    sizes = peers.payload_sizes(seed=21, count=30)
    reader, writer = mp.get_context(method).Pipe(duplex=False)
    try:
        proc = start(children, method, peers.producer_child, writer, capacity, sizes, 22)
        writer.close()
        assert reader.poll(JOIN_TIMEOUT), "the producer never announced its channel"
        channel = peers.attach_channel(reader.recv(), capacity)
        try:
            requests, responses = peers.channel_rings(channel, capacity, SpinPolicy())
            stats = peers.run_consumer(requests, responses)
            del requests, responses
        finally:
            channel.close()
        assert reader.poll(JOIN_TIMEOUT)
        producer_stats = reader.recv()
        join_ok(proc)
    finally:
        reader.close()
    assert stats["received"] == stats["zero_copy"] == len(sizes)
    assert stats["bytes"] == sum(sizes)
    assert producer_stats["released"] == len(sizes)
    assert stats["segments"] == producer_stats["segments"] >= 1


# -- doorbells and message rings across processes ---------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("spin_max", [None, 0.0, 50e-6], ids=["no-policy", "spin-0", "spin-50us"])
def test_round_trips_are_delivered_with_any_spin_policy(
    method: str, spin_max: float | None, children: list[BaseProcess]
) -> None:
    capacity = 1024
    with peers.create_channel(capacity) as channel:
        requests, responses = peers.channel_rings(channel, capacity, peers.spin_policy(spin_max))
        proc = start(children, method, peers.echo_child, channel.name, capacity, spin_max)
        for i in range(300):
            msg = i.to_bytes(4, "little") * (i % 100)
            requests.put(msg, timeout=10)
            assert responses.get(timeout=10) == msg
        requests.put(b"stop", timeout=10)
        join_ok(proc)
        del requests, responses


@pytest.mark.timeout(90)
@pytest.mark.parametrize("spin_max", [None, 50e-6], ids=["no-spin", "spin-50us"])
def test_doorbells_never_lose_a_wake_up(spin_max: float | None, children: list[BaseProcess]) -> None:
    # Both sides sleep without a time slice to rescue them (max_sleep of a
    # minute): a wake-up lost between "flag myself as a sleeper" and "read the
    # sequence" (the store-load order the fence provides) is a wait that runs
    # into its timeout. Without spinning every wait takes the futex path.
    rounds = 3000
    with Segment.create(peers.BELL_SEGMENT) as seg:
        ping, pong = peers.bell_pair(seg)
        proc = start(children, "spawn", peers.bell_pong_child, seg.name, rounds, spin_max)
        spin = peers.spin_policy(spin_max)
        for i in range(1, rounds + 1):
            struct.pack_into("<I", seg.buf, peers.PING_COUNT, i)
            ping.ring()
            pong.wait(lambda i=i: peers.bell_count(seg, peers.PONG_COUNT) == i, 20, spin=spin, max_sleep=60)
        join_ok(proc)
        del ping, pong


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_burst_larger_than_the_ring_then_broken_when_the_producer_closes(
    method: str, children: list[BaseProcess]
) -> None:
    capacity = 512  # far smaller than the burst: the producer blocks for room many times
    count = 2000
    with peers.create_channel(capacity) as channel:
        _, responses = peers.channel_rings(channel, capacity, SpinPolicy())
        proc = start(children, method, peers.burst_child, channel.name, capacity, count, 0.3)
        for i in range(count):
            assert responses.get(timeout=10) == peers.burst_message(i)
        # The producer lingers, then closes: a blocked get() must end with BrokenError.
        start_wait = time.monotonic()
        with pytest.raises(BrokenError):
            responses.get(timeout=10)
        assert time.monotonic() - start_wait < 5
        with pytest.raises(BrokenError):
            responses.get_nowait()
        join_ok(proc)
        del responses


@pytest.mark.timeout(60)
def test_head_and_tail_are_published_atomically(children: list[BaseProcess]) -> None:
    # The consumer polls as fast as it can while the producer floods the ring:
    # a head or tail that is ever seen torn (struct.pack_into zeroes its target
    # before writing) makes pending() negative or larger than the ring, or
    # delivers a stale record from the previous lap.
    capacity = 4096
    count = 200_000
    with peers.create_channel(capacity) as channel:
        requests, _ = peers.channel_rings(channel, capacity)
        proc = start(children, "spawn", peers.flood_child, channel.name, capacity, count)
        deadline = time.monotonic() + 20
        received = 0
        while received < count:
            for _ in range(3):
                pending = requests.pending()
                assert 0 <= pending <= capacity, f"torn head or tail: {pending} bytes pending"
            try:
                msg = requests.get_nowait()
            except WouldBlock:
                assert time.monotonic() < deadline, f"stalled after {received} messages"
                continue
            assert msg == peers.counter_message(received), f"message {received} is stale"
            received += 1
        join_ok(proc)
        del requests


@pytest.mark.timeout(60)
def test_closing_producer_ends_the_consumer_after_draining(children: list[BaseProcess]) -> None:
    capacity = 1024
    with peers.create_channel(capacity) as channel:
        requests, responses = peers.channel_rings(channel, capacity)
        proc = start(children, "spawn", peers.echo_child, channel.name, capacity, None)
        requests.put(b"one", timeout=10)
        requests.put(b"close", timeout=10)
        assert responses.get(timeout=10) == b"one"
        with pytest.raises(BrokenError):
            responses.get(timeout=10)
        join_ok(proc)
        del requests, responses


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [0.1, 0.4])
def test_get_times_out_while_the_peer_is_silent(timeout: float, children: list[BaseProcess]) -> None:
    capacity = 1024
    with peers.create_channel(capacity) as channel:
        requests, responses = peers.channel_rings(channel, capacity, SpinPolicy())
        proc = start(children, "spawn", peers.idle_child, channel.name, capacity)
        started = time.monotonic()
        with pytest.raises(OperationTimeout) as info:
            responses.get(timeout=timeout)
        elapsed = time.monotonic() - started
        assert timeout * 0.5 <= elapsed <= timeout * 1.5 + 0.2
        assert info.value.timeout == timeout
        requests.put(b"stop", timeout=10)
        join_ok(proc)
        del requests, responses


@pytest.mark.timeout(60)
def test_check_callback_runs_while_blocked_and_detects_a_killed_peer(
    children: list[BaseProcess],
) -> None:
    capacity = 1024
    with peers.create_channel(capacity) as channel:
        requests, responses = peers.channel_rings(channel, capacity, SpinPolicy())
        proc = start(children, "spawn", peers.idle_child, channel.name, capacity)
        calls: list[float] = []

        def check() -> None:
            calls.append(time.monotonic())
            if len(calls) == 3:
                assert proc.pid is not None
                os.kill(proc.pid, signal.SIGKILL)
            if not proc.is_alive():
                raise BrokenError("the peer died")

        started = time.monotonic()
        with pytest.raises(BrokenError, match="the peer died"):
            responses.get(timeout=20, check=check)
        assert len(calls) >= 3
        assert time.monotonic() - started < 10
        proc.join(timeout=JOIN_TIMEOUT)
        assert proc.exitcode == -signal.SIGKILL
        del requests, responses


# -- the janitor after SIGKILL ------------------------------------------------------------------


def spawn_holder(children: list[BaseProcess], plain: int, slab_blocks: int) -> tuple[BaseProcess, list[str]]:
    reader, writer = mp.get_context("spawn").Pipe(duplex=False)
    try:
        proc = start(children, "spawn", peers.holder_child, writer, plain, slab_blocks)
        writer.close()
        assert reader.poll(JOIN_TIMEOUT), "the holder never reported its segments"
        names: list[str] = reader.recv()
    finally:
        reader.close()
    return proc, names


def kill(proc: BaseProcess) -> None:
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=JOIN_TIMEOUT)
    assert proc.exitcode == -signal.SIGKILL


@pytest.mark.timeout(60)
def test_janitor_removes_segments_of_a_killed_creator(children: list[BaseProcess]) -> None:
    from rlmesh.shm import Segment, Slab

    with Segment.create(4096) as mine, Slab(segment_size=1 << 16) as my_slab:
        my_slab.alloc(64)
        my_names = {mine.name} | {s.name for s in my_slab.segments.values()}
        proc, names = spawn_holder(children, plain=3, slab_blocks=3)
        assert len(names) == 3 + 2  # three plain segments, a slab that grew to two
        child_pid = proc.pid
        listed = {i.name: i for i in janitor.list_segments()}
        assert all(listed[n].alive for n in names)  # alive while the creator lives
        kill(proc)
        try:
            listed = {i.name: i for i in janitor.list_segments()}
            for name in names:
                info = listed[name]
                assert not info.alive
                assert info.pid == child_pid
                assert info.same_pidns
            for name in my_names:
                assert listed[name].alive
            removed = {i.name for i in janitor.clean(grace=0)}
            assert set(names) <= removed
            assert not removed & my_names
            for name in names:
                assert not os.path.exists(f"/dev/shm/{name}")
            for name in my_names:
                assert os.path.exists(f"/dev/shm/{name}")
            mine.buf[64] = 1  # still perfectly usable
        finally:
            for name in names:
                if os.path.exists(f"/dev/shm/{name}"):
                    os.unlink(f"/dev/shm/{name}")


@pytest.mark.timeout(90)
def test_two_janitors_racing_remove_each_segment_exactly_once(children: list[BaseProcess]) -> None:
    proc, names = spawn_holder(children, plain=40, slab_blocks=6)
    kill(proc)
    ctx = mp.get_context("spawn")
    pipes = []
    try:
        for _ in range(2):
            go_r, go_w = ctx.Pipe(duplex=False)
            res_r, res_w = ctx.Pipe(duplex=False)
            pipes += [go_r, go_w, res_r, res_w]
            start(children, "spawn", peers.janitor_child, go_r, res_w)
            go_r.close()
            res_w.close()
        go_writers, result_readers = pipes[1::4], pipes[2::4]
        for go in go_writers:
            go.send("go")
        results: list[list[str]] = []
        for reader in result_readers:
            assert reader.poll(JOIN_TIMEOUT), "a janitor never answered"
            results.append(reader.recv())
        for janitor_proc in children[1:]:
            join_ok(janitor_proc)
    finally:
        for conn in pipes:
            conn.close()
        for name in names:
            if os.path.exists(f"/dev/shm/{name}"):
                os.unlink(f"/dev/shm/{name}")
    first, second = (set(r) & set(names) for r in results)
    assert not first & second, "a segment was reported removed twice"
    assert first | second == set(names)
