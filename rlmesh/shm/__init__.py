"""``rlmesh.shm``: the shared-memory data plane.

It deals in bytes, offsets and alignment only: no dtypes, no spaces, no numpy.

* :class:`Segment` — one POSIX shm object: 0600, random name, fallocated, verified;
* :class:`Slab` / :class:`Block` — aligned blocks sub-allocated from a few segments;
* :class:`Handle` — a capability naming a block, checked against a table;
* :class:`PeerMemory` / :class:`Lease` — a peer's zero-copy views and their release;
* :class:`MessageRing` / :class:`SlotRing` — per-step traffic;
* :class:`Doorbell` / :class:`SpinPolicy` — cross-process wake-ups;
* :mod:`rlmesh.shm.janitor` — finds and removes segments whose creator died.
"""

from __future__ import annotations

from ._layout import ALIGNMENT as ALIGNMENT, NAME_PREFIX as NAME_PREFIX, SegmentKind as SegmentKind
from .doorbell import Doorbell as Doorbell, SpinPolicy as SpinPolicy
from .handle import Handle as Handle
from .lease import Lease as Lease, PeerMemory as PeerMemory
from .ring import MessageRing as MessageRing, SlotRing as SlotRing
from .segment import Segment as Segment
from .slab import Block as Block, Slab as Slab

__all__ = [
    "ALIGNMENT",
    "NAME_PREFIX",
    "Block",
    "Doorbell",
    "Handle",
    "Lease",
    "MessageRing",
    "PeerMemory",
    "Segment",
    "SegmentKind",
    "Slab",
    "SlotRing",
    "SpinPolicy",
]
