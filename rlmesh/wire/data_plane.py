"""A server session's data plane: the slab blocks holding response tensors a client has not released.

:class:`DataPlane` is sized from the env contract
(:func:`rlmesh.specs.slab_tensor_sizes`): one slot ring per size of the tensors
that travel in blocks (smaller ones travel inline, see
:data:`rlmesh.specs.SHM_INLINE_LIMIT`), so that steady-state steps allocate nothing.
:class:`~rlmesh.wire.server_session.ServerSession` owns one per shared-memory session.
"""

from __future__ import annotations

from typing import Any

from .._lifecycle import Lifecycle, State
from ..errors import InvalidHandle
from ..shm import Handle, Slab, SlotRing
from ..specs import EnvContract, slab_tensor_sizes

__all__ = ["DataPlane", "pow2"]


def _close_data_plane(rings: dict[int, SlotRing], slab: Slab) -> None:
    # A data plane's release (its close, or its finalizer): the rings and the slab, never the plane.
    for ring in rings.values():
        ring.close()
    slab.close()


class DataPlane:
    """The blocks holding tensors a client has not released yet.

    Lifetime: creates its slab (and the per-step slot rings, sized from the
    contract) in the constructor; :meth:`close` releases both and is
    idempotent; :meth:`acquire` and :meth:`release` raise ClosedError after
    it. A data plane never closed releases them when garbage collected, with
    a ``ResourceWarning``. Nothing in it blocks (the slot rings grow).
    """

    DEPTH = 4
    MAX_RINGS = 64

    def __init__(self, contract: EnvContract, *, memfd: bool = False) -> None:
        sizes = slab_tensor_sizes(contract)
        needed = sum(-(-n // 64) * 64 for n in sizes)
        segment_size = max(1 << 20, needed * self.DEPTH + (256 << 10))
        self.slab = Slab(segment_size=segment_size, memfd=memfd)
        self._rings: dict[int, SlotRing] = {}
        self._owner: dict[tuple[int, int], SlotRing | None] = {}
        # Blocks handed out for the response being built: if building it
        # fails (the env raised half-way, its info cannot be encoded), no
        # client will ever release them, so they are taken back at once.
        self.unsent: list[Any] = []
        try:
            # The per-step slots exist before the first step: steady state allocates nothing.
            for nbytes in sorted(set(sizes)):
                self._rings[nbytes] = SlotRing(self.slab, nbytes, self.DEPTH, policy="grow")
        except BaseException:
            _close_data_plane(self._rings, self.slab)
            raise
        self._life = Lifecycle("the session's data plane")
        self._life.watch(self, _close_data_plane, self._rings, self.slab)

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED (see :mod:`rlmesh._lifecycle`)."""
        return self._life.state

    def acquire(self, nbytes: int) -> Any:
        """A block of ``nbytes`` for the response being built (from its slot ring when one fits).

        Raises:
            ShmCapacityError: the slab cannot grow (a full /dev/shm).
            ClosedError: the data plane is closed (its rings and slab say so).
        """
        ring = self._rings.get(nbytes)
        if ring is None:
            if len(self._rings) >= self.MAX_RINGS:
                block = self.slab.alloc(nbytes)
                self._owner[(block.segment, block.offset)] = None
                self.unsent.append(block)
                return block
            ring = self._rings[nbytes] = SlotRing(self.slab, nbytes, 2, policy="grow")
        block = ring.acquire()
        self._owner[(block.segment, block.offset)] = ring
        self.unsent.append(block)
        return block

    def take_back_unsent(self) -> None:
        """Free the blocks of a response that will not be sent."""
        blocks, self.unsent = self.unsent, []
        for block in blocks:
            ring = self._owner.pop((block.segment, block.offset), None)
            if ring is None:
                self.slab.free(block)
            else:
                ring.release(block.handle)

    def release(self, flat: list[int]) -> None:
        """Take back leases (a flat list of handle fields).

        Raises:
            InvalidHandle: a forged or stale handle.
            ClosedError: the data plane is closed (its slot rings say so).
        """
        if len(flat) % 4:
            raise InvalidHandle("a release list must hold whole handles")
        owner = self._owner
        for i in range(0, len(flat), 4):
            handle = Handle.decode(flat[i : i + 4])
            key = (handle.segment, handle.offset)
            if key not in owner:
                raise InvalidHandle(f"{handle} is not leased to this client")
            ring = owner.pop(key)
            if ring is None:
                self.slab.free(self.slab.resolve(handle))
            else:
                ring.release(handle)

    @property
    def leased(self) -> int:
        """Blocks of the per-step slot rings the client holds now."""
        return sum(ring.leased for ring in self._rings.values())

    def close(self) -> None:
        """Release the slot rings and the slab (its segments go with it). Idempotent.

        Raises:
            BusyError: views of the slab are still alive (see :meth:`Slab.close`);
                the data plane is closed all the same.
        """
        if not self._life.begin_close():
            return
        try:
            self._life.release()  # _close_data_plane
        finally:
            self._life.finish_close()


def pow2(n: int) -> int:
    """The smallest power of two >= ``n``, and at least 64 (a ring capacity)."""
    return 1 << max(n - 1, 63).bit_length()
