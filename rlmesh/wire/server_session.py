"""The server's side of a session: its shared-memory data plane and sizes.

:class:`DataPlane` holds the slab blocks carrying the tensors of responses a
client has not released yet; :func:`leaf_sizes` and
:func:`contract_action_bytes` size its slot rings and the session's message
rings from the env contract, so that steady-state steps allocate nothing.
"""

from __future__ import annotations

import math
from typing import Any

from .._dtypes import DTYPES
from ..errors import InvalidHandle
from ..shm import Handle, Slab, SlotRing
from ..specs import EnvContract

__all__ = ["DataPlane", "contract_action_bytes", "leaf_sizes", "pow2"]


class DataPlane:
    """The blocks holding tensors a client has not released yet.

    Lifetime: creates its slab (and the per-step slot rings, sized from the
    contract) in the constructor; :meth:`close` releases both.
    """

    DEPTH = 4
    MAX_RINGS = 64

    def __init__(self, contract: EnvContract) -> None:
        sizes = leaf_sizes(contract)
        needed = sum(-(-n // 64) * 64 for n in sizes)
        segment_size = max(1 << 20, needed * self.DEPTH + (256 << 10))
        self.slab = Slab(segment_size=segment_size)
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
            self.slab.close()
            raise

    def acquire(self, nbytes: int) -> Any:
        """A block of ``nbytes`` for the response being built (from its slot ring when one fits).

        Raises:
            ShmCapacityError: the slab cannot grow (a full /dev/shm).
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

    def close(self) -> None:
        """Release the slot rings and the slab (its segments go with it)."""
        for ring in self._rings.values():
            ring.close()
        self.slab.close()


def leaf_sizes(contract: EnvContract) -> list[int]:
    """Bytes of each tensor a step response carries.

    Observation leaves, and a vector env's rewards and flags.
    """
    batch = contract.num_envs
    sizes: list[int] = []

    def visit(spec: Any) -> None:
        if spec.kind == "dict":
            for _, child in spec.details["spaces"]:
                visit(child)
        elif spec.kind == "tuple":
            for child in spec.details["spaces"]:
                visit(child)
        elif spec.kind == "discrete":
            if batch > 1:
                sizes.append(8 * batch)
        elif spec.kind != "text":
            sizes.append(math.prod(spec.shape) * DTYPES[spec.dtype].itemsize * batch)

    visit(contract.observation_space)
    if batch > 1:
        sizes.extend([8 * batch, batch, batch])
    return sizes


def pow2(n: int) -> int:
    """The smallest power of two >= ``n``, and at least 64 (a ring capacity)."""
    return 1 << max(n - 1, 63).bit_length()


def contract_action_bytes(contract: EnvContract) -> int:
    """A generous bound on the bytes of one step request (sizes the request ring)."""

    def leaf(spec: Any) -> int:
        if spec.kind == "dict":
            return int(sum(leaf(c) for _, c in spec.details["spaces"])) + 64
        if spec.kind == "tuple":
            return int(sum(leaf(c) for c in spec.details["spaces"])) + 64
        if spec.kind == "text":
            return 4 * int(spec.details["max_length"]) + 16
        return int(math.prod(spec.shape)) * DTYPES[spec.dtype].itemsize + 128

    return leaf(contract.action_space) * contract.num_envs + 256
