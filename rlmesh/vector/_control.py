"""Control messages between a vector server and its workers: msgpack frames on a socketpair.

A frame is a little-endian u32 length and that many bytes of msgpack. The
length is checked against :data:`MAX_CONTROL` before anything is allocated,
and every read and write has a deadline. Rare traffic only (the worker's
configuration and its ready report, render, close); steps never use it.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Any

import msgpack

from ..errors import BrokenError, DecodeError, OperationTimeout

__all__ = ["MAX_CONTROL", "recv_msg", "send_msg"]

#: The largest control frame (a rendered frame of a big env fits).
MAX_CONTROL = 64 << 20

_LEN = struct.Struct("<I")


def _wait(sock: socket.socket, write: bool, deadline: float | None) -> None:
    remaining = None if deadline is None else deadline - time.monotonic()
    if remaining is not None and remaining <= 0:
        raise OperationTimeout("a vector worker did not answer in time", timeout=remaining)
    poller = select.poll()
    poller.register(sock, select.POLLOUT if write else select.POLLIN)
    if not poller.poll(None if remaining is None else max(int(remaining * 1000), 1)):
        raise OperationTimeout("a vector worker did not answer in time", timeout=remaining)


def send_msg(sock: socket.socket, obj: Any, timeout: float | None) -> None:
    """Send one msgpack frame.

    Raises:
        BrokenError: the peer is gone. OperationTimeout: not sent in time.
    """
    body = msgpack.packb(obj)
    data = memoryview(_LEN.pack(len(body)) + body)
    deadline = None if timeout is None else time.monotonic() + timeout
    while data:
        _wait(sock, True, deadline)
        try:
            sent = sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise BrokenError(f"the vector worker's control socket failed: {exc}") from exc
        data = data[sent:]


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    out = bytearray()
    while len(out) < n:
        _wait(sock, False, deadline)
        try:
            chunk = sock.recv(min(n - len(out), 1 << 20), socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise BrokenError(f"the vector worker's control socket failed: {exc}") from exc
        if not chunk:
            raise BrokenError("the peer closed the control socket")
        out += chunk
    return bytes(out)


def recv_msg(sock: socket.socket, timeout: float | None) -> Any:
    """Receive one msgpack frame.

    Raises:
        BrokenError: the peer is gone. OperationTimeout: nothing in time.
        DecodeError: an oversized or undecodable frame.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    (length,) = _LEN.unpack(_recv_exact(sock, 4, deadline))
    if length > MAX_CONTROL:
        raise DecodeError(f"a control frame of {length} bytes exceeds the {MAX_CONTROL} limit")
    body = _recv_exact(sock, length, deadline)
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        raise DecodeError(f"undecodable control frame ({exc})") from None
