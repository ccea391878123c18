"""Commands to the vector workers, as :class:`rlmesh.vector.lanes.Lanes` issues them.

Writing a worker's command (op, batch buffer, sequence number) into its block
and ringing its doorbell; waiting with a deadline until every commanded worker
reports done; turning a worker's status into the typed error (``WorkerError``
for a lost worker, with the reason the server's monitor wrote; ``RemoteError``
for an exception in the env; ``OperationTimeout`` naming the lanes still
outstanding); checking the batch handle a worker reported. :class:`_WorkerCommands`
is the base ``Lanes`` inherits these from; it owns nothing itself (its
attributes are set by the ``Lanes`` constructor). Split from
``rlmesh.vector.lanes``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from .._native import bell_ring, wait_words
from .._spin import SpinPolicy
from ..errors import InvalidHandle, OperationTimeout, RemoteError, WorkerError
from ..shm import Segment
from ..shm.doorbell import WORD_EQ, Doorbell
from . import _layout as L

_U32 = struct.Struct("<I")
#: A command's op and buffer words, adjacent in the worker's block.
_CMD = struct.Struct("<II")
#: The wait condition of one command (two terms: done, or lost).
_ONE_TERM = struct.Struct("<8I")
#: A worker's report, from ``done_seq``: done_seq, status, done_buf, err_len.
_DONE = struct.Struct("<IIII")
#: Where worker w's sequence number sits in the terms of a command to every worker
#: (each worker's two terms are 32 bytes; the value is the third u32 of the first).
_ALL_SEQ_AT = 8


class _WorkerCommands:
    """Issue, wait for and check the workers' commands (see the module's docstring)."""

    # Set by Lanes.__init__.
    segment: Segment
    layout: L.Layout
    _buf: memoryview
    _bell: Doorbell
    _workers: list[Doorbell]
    _spin: SpinPolicy
    _check: Callable[[], None] | None
    _seq: list[int]
    _stale: list[tuple[int, int]]
    #: Each worker's block offset.
    _blocks: list[int]
    #: The wait condition of a command to every worker, its sequence numbers
    #: patched in place per command (``_ALL_SEQ_AT`` + 32 w).
    _all_terms: bytearray
    #: ``check_batch`` of each buffer, once it passed (the layout and the size never change).
    _checked: list[int | None]

    # -- commands -------------------------------------------------------------------------

    def _command(
        self, w: int, op: int, k: int, *, wake: int = L.WAKE_EACH, ring: bool = True
    ) -> tuple[int, int]:
        """Write worker ``w``'s command (and ring it unless ``ring`` is False); ``(w, seq)``."""
        buf, block = self._buf, self.layout.worker_block(w)
        seq = (self._seq[w] + 1) & 0xFFFFFFFF
        self._seq[w] = seq
        _CMD.pack_into(buf, block + L.W_OP, op, k)
        _U32.pack_into(buf, block + L.W_WAKE, wake)
        _U32.pack_into(buf, block + L.W_CMD_SEQ, seq)
        _U32.pack_into(self._all_terms, _ALL_SEQ_AT + 32 * w, seq)
        if ring:
            self._workers[w].ring()
        return w, seq

    def _command_all(self, op: int, k: int) -> list[tuple[int, int]]:
        """Command every worker, then ring them: the last to finish wakes the client (once)."""
        buf, seqs, terms = self._buf, self._seq, self._all_terms
        wake = L.WAKE_LAST if len(seqs) > 1 else L.WAKE_EACH
        commands = []
        # Every command is written before any worker is rung, so a fast worker never
        # takes a peer about to be commanded for idle (and rings the client early).
        # The sequence number last: a worker reads op, buf and wake once it moved on.
        for w, block in enumerate(self._blocks):
            seq = (seqs[w] + 1) & 0xFFFFFFFF
            seqs[w] = seq
            _CMD.pack_into(buf, block + L.W_OP, op, k)
            _U32.pack_into(buf, block + L.W_WAKE, wake)
            _U32.pack_into(buf, block + L.W_CMD_SEQ, seq)
            _U32.pack_into(terms, _ALL_SEQ_AT + 32 * w, seq)
            commands.append((w, seq))
        for block in self._blocks:
            bell_ring(buf, block + L.W_BELL)
        return commands

    def _terms(self, commands: list[tuple[int, int]]) -> bytes | bytearray:
        """The condition "every command done (or its worker lost)", for ``Doorbell.wait_words``."""
        seqs = self._seq
        if len(commands) == len(seqs):
            for w, (cw, seq) in enumerate(commands):
                if cw != w or seqs[w] != seq:
                    break
            else:
                # The last command of every worker, in order (a step or a reset): its
                # terms are kept up to date by every command.
                return self._all_terms
        return self._pack_terms(commands)

    def _pack_terms(self, commands: list[tuple[int, int]]) -> bytes:
        """:meth:`_terms`, packed afresh."""
        if len(commands) == 1:
            w, seq = commands[0]
            block = self.layout.worker_block(w)
            return _ONE_TERM.pack(
                block + L.W_DONE_SEQ, WORD_EQ, seq, 0, block + L.W_STATUS, WORD_EQ, L.STATUS_LOST, 0
            )
        args: list[int] = []
        for g, (w, seq) in enumerate(commands):
            block = self.layout.worker_block(w)
            args += (block + L.W_DONE_SEQ, WORD_EQ, seq, g, block + L.W_STATUS, WORD_EQ, L.STATUS_LOST, g)
        return struct.pack(f"<{len(args)}I", *args)

    def _lanes_of(self, w: int) -> list[int]:
        lo, hi = self.layout.groups[w]
        return list(range(lo, hi))

    def _wait(self, commands: list[tuple[int, int]], timeout: float | None, what: str) -> None:
        """Wait until every command is done; raise for a lost worker, an error, or the deadline."""
        self._wait_only(commands, timeout, what)
        self._raise_for(commands)

    def _wait_only(
        self, commands: list[tuple[int, int]], timeout: float | None, what: str, *, spin: bool = True
    ) -> None:
        """Wait until every command is done (or its worker lost); OperationTimeout at the deadline."""
        try:
            self._bell.wait_words(
                self._terms(commands), timeout, spin=self._spin if spin else None, check=self._check
            )
        except OperationTimeout:
            buf = self._buf
            late = [
                (w, seq)
                for w, seq in commands
                if _U32.unpack_from(buf, self.layout.worker_block(w) + L.W_DONE_SEQ)[0] != seq
            ]
            self._stale.extend(late)
            lanes = [lane for w, _ in late for lane in self._lanes_of(w)]
            raise OperationTimeout(
                f"{what} timed out after {timeout:.3g}s; lanes {lanes} (workers {[w for w, _ in late]}) "
                "are still outstanding",
                timeout=timeout,
            ) from None

    def _collect(self, commands: list[tuple[int, int]], k: int, timeout: float | None, what: str) -> int:
        """:meth:`_wait`, then the checks of :meth:`_raise_for` and :meth:`_batch` in one pass.

        Raises as those do, in the same order: a lost worker first, then an env's
        error, then a batch handle that is not the buffer commanded.
        """
        self._wait_only(commands, timeout, what)
        return self._check_done(commands, k)

    def _collect_all(self, commands: list[tuple[int, int]], k: int, timeout: float | None, what: str) -> int:
        """:meth:`_collect` for the commands of :meth:`_command_all`, the common case first.

        One spin in C on the kept terms (the spin policy's budget, unless the
        machine is oversubscribed or the deadline is nearer), then one look at
        each worker's report: all done, ok, and the buffer commanded, it is
        over. Otherwise (the spin missed, an error, a lost worker) the wait
        goes on without a second spin, and :meth:`_check_done` raises as
        :meth:`_collect` does.
        """
        spin = self._spin
        start = time.monotonic()
        budget = spin.current(start)
        if budget > 0 and (timeout is None or budget < timeout):
            if wait_words(self._buf, self._all_terms, L.CLIENT_BELL, budget, 0.0):
                spin.record(time.monotonic() - start)
                buf = self._buf
                for block in self._blocks:
                    _, status, done_buf, _ = _DONE.unpack_from(buf, block + L.W_DONE_SEQ)
                    if status != L.STATUS_OK or done_buf != k:
                        break
                else:
                    offset = self._checked[k] if 0 <= k < len(self._checked) else None
                    if offset is not None:
                        return offset
                return self._check_done(commands, k)
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            self._wait_only(commands, left, what, spin=False)
            spin.record(time.monotonic() - start)
            return self._check_done(commands, k)
        # No spin (the machine is oversubscribed, or spinning is off): straight to the
        # sleep, without asking the policy again; a deadline nearer than the budget
        # spins what is left of it, as Doorbell.wait_words does.
        self._wait_only(commands, timeout, what, spin=budget > 0)
        return self._check_done(commands, k)

    def _check_done(self, commands: list[tuple[int, int]], k: int) -> int:
        """The checks of :meth:`_collect` on commands that are done; the buffer's offset."""
        buf, blocks = self._buf, self._blocks
        error: BaseException | None = None
        forged = -1
        for w, _ in commands:
            _, status, done_buf, _ = _DONE.unpack_from(buf, blocks[w] + L.W_DONE_SEQ)
            if status == L.STATUS_LOST:
                self._raise_for([(w, 0)])
            if status == L.STATUS_ERROR and error is None:
                error = self._remote_error(w)
            if done_buf != k and forged < 0:
                forged = w
        if error is not None:
            raise error
        if forged >= 0:
            self._batch([(forged, 0)], k)
        offset = self._checked[k] if 0 <= k < len(self._checked) else None
        if offset is None:
            offset, _ = self.layout.check_batch(k, self.segment.size)
            self._checked[k] = offset
        return offset

    def _raise_for(self, commands: list[tuple[int, int]]) -> None:
        buf = self._buf
        error: BaseException | None = None
        for w, _ in commands:
            block = self.layout.worker_block(w)
            status = _U32.unpack_from(buf, block + L.W_STATUS)[0]
            if status == L.STATUS_LOST:
                lanes = self._lanes_of(w)
                # The server's monitor wrote why in the worker's error area (exit status, crash loop).
                reason = self._remote_error(w).remote_message
                raise WorkerError(
                    f"vector worker {w} (lanes {lanes}) died ({reason}); "
                    "restart the session (close and reconnect)",
                    lanes=lanes,
                    worker=w,
                )
            if status == L.STATUS_ERROR and error is None:
                error = self._remote_error(w)
        if error is not None:
            raise error

    def _remote_error(self, w: int) -> RemoteError:
        import msgpack

        buf, block = self._buf, self.layout.worker_block(w)
        length = min(_U32.unpack_from(buf, block + L.W_ERR_LEN)[0], L.ERROR_BYTES)
        start = self.layout.errors + w * L.ERROR_BYTES
        try:
            kind, message, tb, lane = msgpack.unpackb(bytes(buf[start : start + length]), raw=False)
        except Exception:
            kind, message, tb, lane = "RemoteError", "undecodable error report", "", -1
        where = f"lane {lane}" if lane >= 0 else f"worker {w}"
        return RemoteError(
            f"the env of {where} raised {kind}: {message}",
            remote_type=str(kind),
            remote_message=str(message),
            remote_traceback=str(tb),
        )

    def _batch(self, commands: list[tuple[int, int]], k: int) -> int:
        """Check the batch handle every commanded worker reported; the buffer's offset."""
        buf = self._buf
        for w, _ in commands:
            done = _U32.unpack_from(buf, self.layout.worker_block(w) + L.W_DONE_BUF)[0]
            if done != k:
                raise InvalidHandle(f"worker {w} reported batch buffer {done}, the command named {k}")
        offset, _ = self.layout.check_batch(k, self.segment.size)
        return offset
