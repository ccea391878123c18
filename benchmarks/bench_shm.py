"""rlmesh's shared-memory data plane against a socketpair and multiprocessing.Pipe.

Run from the repository root::

    python -m benchmarks.bench_shm             # full run (about a minute)
    python -m benchmarks.bench_shm --quick     # smoke run (noisy)
    python -m benchmarks.bench_shm --json-only > results.jsonl

Every peer runs in a separate process started with ``spawn``. Two groups:

1. **Round trip**: an 8-byte message there and back. rlmesh: two MessageRings
   in one channel segment, with doorbells (default SpinPolicy; then
   SpinPolicy(0), no spinning; then the default with two extra busy-loop
   processes competing for the cores). Peers: ``socket.socketpair()``
   (sendall + recv_into) and ``multiprocessing.Pipe()``
   (send_bytes + recv_bytes).
2. **Transfer** of 16 B, 28 KiB and 4 MiB, one message in flight. rlmesh: the
   producer acquires a SlotRing slot, copies the payload into it, and sends
   the 32-byte handle through a MessageRing; the consumer takes a zero-copy
   PeerMemory view, reads its first and last byte, drops it, and sends the
   release back; the producer releases the slot. socketpair: sendall of the
   payload, recv_into a preallocated buffer, read first and last byte, 8-byte
   acknowledgement. Pipe: send_bytes, recv_bytes_into a preallocated buffer,
   same reads, 8-byte acknowledgement. Latency is the whole exchange;
   throughput is payload bytes over the timed time.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing as mp
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import (  # noqa: E402
    Runner,
    add_common_args,
    deadline,
    markdown_table,
)
from rlmesh.shm import (  # noqa: E402
    Handle,
    MessageRing,
    PeerMemory,
    Segment,
    SegmentKind,
    Slab,
    SlotRing,
    SpinPolicy,
)
from rlmesh.shm._layout import align_up  # noqa: E402

CAPACITY = 1 << 16
#: A peer that hears nothing for this long gives up (the parent died).
PEER_TIMEOUT = 120.0
#: The parent's bound on any single exchange.
STEP_TIMEOUT = 30.0
#: The bound on one whole measurement (spawn, warm-up, repeats).
ROW_DEADLINE = 300.0

MSG = b"ping1234"
ACK = b"released"
HANDLE = struct.Struct("<4Q")
SEGMENT = struct.Struct("<QQ")
SIZES = [16, 28 * 1024, 4 * 1024 * 1024]
DEFAULT_SPIN = SpinPolicy().maximum


def fmt_size(n: int) -> str:
    if n >= 1 << 20:
        return f"{n >> 20} MiB"
    if n >= 1 << 10:
        return f"{n >> 10} KiB"
    return f"{n} B"


# -- the channel ----------------------------------------------------------------------------


def channel_size() -> int:
    return 64 + 2 * align_up(MessageRing.footprint(CAPACITY))


def channel_rings(seg: Segment, spin_max: float | None) -> tuple[MessageRing, MessageRing]:
    """(requests, responses); each side builds its own objects over the same memory."""
    second = 64 + align_up(MessageRing.footprint(CAPACITY))
    spin = None if spin_max is None else SpinPolicy(spin_max)
    requests = MessageRing(seg.buf, seg.address, 64, CAPACITY, spin=spin)
    spin = None if spin_max is None else SpinPolicy(spin_max)
    responses = MessageRing(seg.buf, seg.address, second, CAPACITY, spin=spin)
    return requests, responses


# -- peers (run in spawned processes) ----------------------------------------------------------


def rlmesh_peer(channel: str, spin_max: float) -> None:
    """Echo tiny messages; serve transfers: b"S" announces a segment, b"H" sends a handle."""
    seg = Segment.attach(channel, channel_size())
    peer = PeerMemory()
    try:
        requests, responses = channel_rings(seg, spin_max)
        while True:
            raw = requests.get(timeout=PEER_TIMEOUT)
            kind = raw[:1]
            if kind == b"H":
                handle = Handle.decode(list(HANDLE.unpack_from(raw, 1)))
                view = peer.view(handle)
                view[0], view[-1]  # noqa: B018 - touch the first and the last byte
                del view
                releases = peer.take_releases()
                responses.put(b"R" + b"".join(HANDLE.pack(*h) for h in releases), timeout=PEER_TIMEOUT)
            elif kind == b"S":
                sid, size = SEGMENT.unpack_from(raw, 1)
                peer.add_segment(sid, raw[1 + SEGMENT.size :].decode(), size)
            elif raw == b"stop":
                break
            else:
                responses.put(raw, timeout=PEER_TIMEOUT)
        del requests, responses
    finally:
        peer.close()
        seg.close()


def recv_exact(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from ``sock``; False on EOF."""
    got, size = 0, len(view)
    while got < size:
        n = sock.recv_into(view[got:] if got else view)
        if not n:
            return False
        got += n
    return True


def socket_peer(sock: socket.socket, size: int) -> None:
    """Echo ``size``-byte messages (size 8), or take ``size``-byte payloads and acknowledge them."""
    # Blocking, without a timeout: a timeout adds a poll() before every recv. If
    # the parent dies, its end closes and recv returns EOF.
    buf = bytearray(size)
    view = memoryview(buf)
    with sock:
        while recv_exact(sock, view):
            if size == len(MSG):
                sock.sendall(view)
            else:
                buf[0], buf[-1]  # noqa: B018 - touch the first and the last byte
                sock.sendall(ACK)


def pipe_peer(conn: Connection, size: int) -> None:
    """Echo messages (size 8), or take ``size``-byte payloads into a buffer and acknowledge them."""
    buf = bytearray(size)
    with conn:
        while True:  # no poll() per message: EOF when the parent closes or dies
            try:
                if size == len(MSG):
                    conn.send_bytes(conn.recv_bytes())
                    continue
                conn.recv_bytes_into(buf)
            except EOFError:
                break
            buf[0], buf[-1]  # noqa: B018 - touch the first and the last byte
            conn.send_bytes(ACK)


def busy_loop(ready: Connection) -> None:
    ready.send(True)
    ready.close()
    while True:
        pass


# -- process plumbing -----------------------------------------------------------------------------


CTX = mp.get_context("spawn")


@contextlib.contextmanager
def child(target: Callable[..., None], *args: Any) -> Iterator[BaseProcess]:
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    try:
        yield proc
    finally:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)
        proc.close()


def liveness(proc: BaseProcess) -> Callable[[], None]:
    """A ring ``check``: runs only while a wait sleeps, so it costs nothing when the peer answers."""

    def check() -> None:
        if not proc.is_alive():
            raise RuntimeError(f"the peer process exited with {proc.exitcode}")

    return check


@contextlib.contextmanager
def busy(count: int) -> Iterator[None]:
    """``count`` extra processes spinning on the CPU (oversubscription), killed afterwards."""
    procs = []
    try:
        for _ in range(count):
            ready_r, ready_w = CTX.Pipe(duplex=False)
            proc = CTX.Process(target=busy_loop, args=(ready_w,), daemon=True)
            proc.start()
            procs.append(proc)
            ready_w.close()
            if not ready_r.poll(STEP_TIMEOUT):
                raise RuntimeError("a busy-loop process did not start")
            ready_r.close()
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.join(timeout=10)
            proc.close()


# -- the measurements -------------------------------------------------------------------------


def rlmesh_roundtrip(runner: Runner, spin_max: float) -> Any:
    with Segment.create(channel_size(), SegmentKind.CHANNEL) as seg:
        requests, responses = channel_rings(seg, spin_max)
        with child(rlmesh_peer, seg.name, spin_max) as proc:
            check = liveness(proc)
            requests.put(MSG, timeout=STEP_TIMEOUT)
            assert responses.get(timeout=STEP_TIMEOUT, check=check) == MSG

            def op() -> None:
                requests.put(MSG, timeout=STEP_TIMEOUT, check=check)
                responses.get(timeout=STEP_TIMEOUT, check=check)

            samples = runner.measure(op)
            requests.put(b"stop", timeout=STEP_TIMEOUT)
    return samples


def socket_roundtrip(runner: Runner) -> Any:
    mine, theirs = socket.socketpair()
    with mine:
        with child(socket_peer, theirs, len(MSG)):
            theirs.close()
            buf = memoryview(bytearray(len(MSG)))

            def op() -> None:
                mine.sendall(MSG)
                if mine.recv_into(buf) != len(MSG):  # an 8-byte echo arrives whole
                    recv_exact(mine, buf)

            op()
            assert bytes(buf) == MSG
            samples = runner.measure(op)
            mine.shutdown(socket.SHUT_WR)
    return samples


def pipe_roundtrip(runner: Runner) -> Any:
    mine, theirs = CTX.Pipe()
    with mine:
        with child(pipe_peer, theirs, len(MSG)):
            theirs.close()

            def op() -> None:
                mine.send_bytes(MSG)
                mine.recv_bytes()

            mine.send_bytes(MSG)
            assert mine.recv_bytes() == MSG
            samples = runner.measure(op)
            mine.close()
    return samples


def rlmesh_transfer(runner: Runner, size: int) -> Any:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    memmove = ctypes.memmove
    with (
        Segment.create(channel_size(), SegmentKind.CHANNEL) as seg,
        Slab(segment_size=max(16 << 20, 4 * align_up(size))) as slab,
    ):
        requests, responses = channel_rings(seg, DEFAULT_SPIN)
        slots = SlotRing(slab, size, 2, policy="grow")
        with child(rlmesh_peer, seg.name, DEFAULT_SPIN) as proc:
            check = liveness(proc)
            for sid, name, seg_size in slab.take_new_segments():
                requests.put(b"S" + SEGMENT.pack(sid, seg_size) + name.encode(), timeout=STEP_TIMEOUT)

            def op() -> None:
                block = slots.acquire(timeout=STEP_TIMEOUT)
                memmove(block.address, payload, size)
                block.nbytes = size
                requests.put(b"H" + HANDLE.pack(*block.handle), timeout=STEP_TIMEOUT, check=check)
                raw = responses.get(timeout=STEP_TIMEOUT, check=check)
                for offset in range(1, len(raw), HANDLE.size):
                    slots.release(Handle.decode(list(HANDLE.unpack_from(raw, offset))))

            op()
            samples = runner.measure(op)
            requests.put(b"stop", timeout=STEP_TIMEOUT)
        if slots.leased or slots.total != 2 or slab.take_new_segments():
            raise RuntimeError(f"slot accounting is off after the run: {slots!r}")
    return samples


def socket_transfer(runner: Runner, size: int) -> Any:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    mine, theirs = socket.socketpair()
    with mine:
        with child(socket_peer, theirs, size):
            theirs.close()
            ack = memoryview(bytearray(len(ACK)))

            def op() -> None:
                mine.sendall(payload)
                if mine.recv_into(ack) != len(ACK):
                    recv_exact(mine, ack)

            op()
            assert bytes(ack) == ACK
            samples = runner.measure(op)
            mine.shutdown(socket.SHUT_WR)
    return samples


def pipe_transfer(runner: Runner, size: int) -> Any:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    mine, theirs = CTX.Pipe()
    with mine:
        with child(pipe_peer, theirs, size):
            theirs.close()

            def op() -> None:
                mine.send_bytes(payload)
                mine.recv_bytes()

            op()
            samples = runner.measure(op)
            mine.close()
    return samples


# -- the report -------------------------------------------------------------------------------


def mbps(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def us(ns: float) -> str:
    return f"{ns / 1000:.1f} us" if ns < 1e6 else f"{ns / 1e6:.2f} ms"


def summary_table(records: list[dict[str, Any]]) -> str:
    def find(**labels: Any) -> dict[str, Any] | None:
        for rec in records:
            if all(rec.get(k) == v for k, v in labels.items()):
                return rec
        return None

    rows: list[list[str]] = []

    def latency_row(title: str, size: int, mine: Any, sock: Any, pipe: Any) -> None:
        if mine is None:
            return
        cells = [title, fmt_size(size), us(mine["median_ns"])]
        for peer in (sock, pipe):
            cells.append(us(peer["median_ns"]) if peer else "-")
        for peer in (sock, pipe):
            cells.append(f"{mine['median_ns'] / peer['median_ns']:.2f}x" if peer else "-")
        rows.append(cells)

    def throughput_row(size: int, mine: Any, sock: Any, pipe: Any) -> None:
        if mine is None:
            return
        cells = ["transfer throughput (MB/s)", fmt_size(size), mbps(mine["throughput_MBps"])]
        for peer in (sock, pipe):
            cells.append(mbps(peer["throughput_MBps"]) if peer else "-")
        for peer in (sock, pipe):
            cells.append(f"{mine['throughput_MBps'] / peer['throughput_MBps']:.2f}x" if peer else "-")
        rows.append(cells)

    rt = {"group": "roundtrip"}
    sock_rt = find(**rt, transport="socketpair", load="idle")
    pipe_rt = find(**rt, transport="mp.Pipe", load="idle")
    latency_row(
        "round trip, default spin",
        8,
        find(**rt, transport="rlmesh", variant="spin-default", load="idle"),
        sock_rt,
        pipe_rt,
    )
    latency_row(
        "round trip, SpinPolicy(0)",
        8,
        find(**rt, transport="rlmesh", variant="spin-0", load="idle"),
        sock_rt,
        pipe_rt,
    )
    latency_row(
        "round trip, +2 busy processes",
        8,
        find(**rt, transport="rlmesh", variant="spin-default", load="busy+2"),
        find(**rt, transport="socketpair", load="busy+2"),
        None,
    )
    for size in SIZES:
        tr = {"group": "transfer", "size": size}
        latency_row(
            "transfer latency",
            size,
            find(**tr, transport="rlmesh"),
            find(**tr, transport="socketpair"),
            find(**tr, transport="mp.Pipe"),
        )
    for size in SIZES:
        tr = {"group": "transfer", "size": size}
        throughput_row(
            size,
            find(**tr, transport="rlmesh"),
            find(**tr, transport="socketpair"),
            find(**tr, transport="mp.Pipe"),
        )
    headers = [
        "measurement",
        "size",
        "rlmesh",
        "socketpair",
        "mp.Pipe",
        "rlmesh/socketpair",
        "rlmesh/mp.Pipe",
    ]
    return markdown_table(headers, rows)


def detail_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for rec in records:
        rows.append(
            [
                rec["group"],
                rec["transport"],
                rec.get("variant", ""),
                rec["load"],
                fmt_size(rec["size"]),
                us(rec["median_ns"]),
                us(rec["p10_ns"]),
                us(rec["p90_ns"]),
                us(rec["p99_ns"]),
                mbps(rec["throughput_MBps"]) if rec["group"] == "transfer" else "-",
                f"{int(rec['ops']):,}",
            ]
        )
    headers = ["group", "transport", "variant", "load", "size", "median", "p10", "p90", "p99", "MB/s", "ops"]
    return markdown_table(headers, rows)


def targets(records: list[dict[str, Any]]) -> list[str]:
    def get(**labels: Any) -> dict[str, Any] | None:
        return next((r for r in records if all(r.get(k) == v for k, v in labels.items())), None)

    out = []
    mine = get(group="roundtrip", transport="rlmesh", variant="spin-default", load="idle")
    sock = get(group="roundtrip", transport="socketpair", load="idle")
    if mine and sock:
        ok = mine["median_ns"] <= sock["median_ns"]
        out.append(
            f"round trip <= socketpair's: {'met' if ok else 'NOT met'} "
            f"({us(mine['median_ns'])} vs {us(sock['median_ns'])})"
        )
        ok = mine["median_ns"] < 10_000
        out.append(f"round trip < 10 us: {'met' if ok else 'NOT met'} ({us(mine['median_ns'])})")
    big = SIZES[-1]
    mine = get(group="transfer", transport="rlmesh", size=big)
    sock = get(group="transfer", transport="socketpair", size=big)
    if mine and sock:
        ratio = mine["throughput_MBps"] / sock["throughput_MBps"]
        out.append(
            f"{fmt_size(big)} throughput >= 3x socketpair's: {'met' if ratio >= 3 else 'NOT met'} "
            f"({ratio:.2f}x)"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_shm", description=(__doc__ or "").split("\n")[0]
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    runner = Runner("shm", args, extra_packages=["numpy", "posix_ipc", "msgpack"])

    def run(labels: dict[str, Any], fn: Callable[[], Any], nbytes: int | None = None) -> None:
        what = "/".join(str(v) for v in labels.values())
        with deadline(ROW_DEADLINE, what):
            samples = fn()
        runner.record(labels, samples, nbytes=nbytes)

    rt = {"group": "roundtrip", "size": len(MSG)}
    run(
        {**rt, "transport": "rlmesh", "variant": "spin-default", "load": "idle"},
        lambda: rlmesh_roundtrip(runner, DEFAULT_SPIN),
    )
    run(
        {**rt, "transport": "rlmesh", "variant": "spin-0", "load": "idle"},
        lambda: rlmesh_roundtrip(runner, 0.0),
    )
    run({**rt, "transport": "socketpair", "load": "idle"}, lambda: socket_roundtrip(runner))
    run({**rt, "transport": "mp.Pipe", "load": "idle"}, lambda: pipe_roundtrip(runner))
    with busy(2):
        run(
            {**rt, "transport": "rlmesh", "variant": "spin-default", "load": "busy+2"},
            lambda: rlmesh_roundtrip(runner, DEFAULT_SPIN),
        )
    with busy(2):
        run({**rt, "transport": "socketpair", "load": "busy+2"}, lambda: socket_roundtrip(runner))
    for size in SIZES:
        tr = {"group": "transfer", "size": size, "load": "idle"}
        run(
            {**tr, "transport": "rlmesh", "variant": "spin-default"},
            lambda n=size: rlmesh_transfer(runner, n),
            nbytes=size,
        )
        run({**tr, "transport": "socketpair"}, lambda n=size: socket_transfer(runner, n), nbytes=size)
        run({**tr, "transport": "mp.Pipe"}, lambda n=size: pipe_transfer(runner, n), nbytes=size)

    if not args.json_only:
        print()
        print(summary_table(runner.records))
        print()
        print("Latency ratios below 1 and throughput ratios above 1 favour rlmesh.")
        for line in targets(runner.records):
            print("- " + line)
        print()
        print(detail_table(runner.records))
    runner.finish()


if __name__ == "__main__":
    main()
