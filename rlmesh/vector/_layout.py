"""The vector session segment: where every field lives, computed once from the contract.

One shared-memory segment per vector session holds everything the client and
the worker processes exchange on the hot path. Offsets are relative to the
segment's first byte (its 64-byte rlmesh header included)::

    0        segment header (rlmesh.shm._layout)
    64       vector header: magic u32, version u32, N u32, W u32, K u32
    128      client doorbell (8 bytes; the client waits on it)
    192 + w*128  worker block w (two cache lines):
               +0   doorbell (8 bytes; worker w waits on it)
               +8   cmd_seq u32   bumped by the client per command
               +12  op u32        1 STEP, 2 RESET
               +16  buf u32       the output buffer the command writes
               +20  ctl u32       1 while the server has a control message for it
               +24  wake u32      1: ring the client only if no other worker is busy
                                  (the last to finish rings: one wake-up a batch); 0: always
               +64  done_seq u32  set to cmd_seq by the worker when done
               +68  status u32    0 ok, 1 error (see the error area), 2 lost (dead worker)
               +72  done_buf u32  the buffer it wrote (checked by the client)
               +76  err_len u32   bytes of msgpack in the worker's error area
    lanes    mask u8[N] (lanes a command covers), has_seed u8[N], seeds i64[N],
             options: u32 length + OPTIONS_BYTES of msgpack
    actions  one (N, ...) array per action leaf, each 64-byte aligned
    errors   W areas of ERROR_BYTES (msgpack [type, message, traceback, lane])
    buffers  K + 1 output buffers; buffer k holds, each 64-byte aligned:
             the observation leaves (N, ...); rewards f64[N]; terminated u8[N];
             truncated u8[N]; info_len u32[N]; final_mask u8[N]; SameStep's
             final observation leaves (N, ...); info bytes N * INFO_BYTES

Buffers 0..K-1 rotate under the lease rule (a buffer is written again only
once no view of it is alive); buffer K is the scratch buffer, used when all
K are held (results are then copied) and by send/recv (whose results are
always gathered into fresh arrays).

Per-lane info is msgpack (:mod:`rlmesh.vector._info`), at most INFO_BYTES a
lane; a length of 0 means "no info", so the common case decodes nothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from .._dtypes import DTYPES
from ..errors import InvalidHandle, ProtocolError
from ..spaces._walk import Path, leaves
from ..specs import EnvContract

__all__ = [
    "ERROR_BYTES",
    "INFO_BYTES",
    "OPTIONS_BYTES",
    "Layout",
    "Leaf",
    "composite_kinds",
    "fast_path_leaves",
    "spin_plan",
    "tree_builder",
]

MAGIC = 0x424C5652  # "RVLB"
VERSION = 1
ALIGN = 64
HEADER = 64
CLIENT_BELL = 128
WORKERS = 192
WORKER_BLOCK = 128

# Worker block fields.
W_BELL = 0
W_CMD_SEQ = 8
W_OP = 12
W_BUF = 16
W_CTL = 20
W_WAKE = 24
W_DONE_SEQ = 64
W_STATUS = 68
W_DONE_BUF = 72
W_ERR_LEN = 76

OP_STEP = 1
OP_RESET = 2

STATUS_OK = 0
STATUS_ERROR = 1
STATUS_LOST = 2

#: ``wake`` values: ring the client on every command done, or only as the last busy worker.
WAKE_EACH = 0
WAKE_LAST = 1

#: Bytes of msgpack info a lane may produce per step (an info larger than this
#: is an error naming the lane).
INFO_BYTES = 8192
#: Bytes of msgpack reset options (shared by every lane of a reset).
OPTIONS_BYTES = 64 << 10
#: Bytes of a worker's error report (longer tracebacks are cut).
ERROR_BYTES = 64 << 10
#: Leased output buffers (one more, the scratch buffer, is always there).
DEFAULT_BUFFERS = 4
#: The most output buffers a layout may declare.
MAX_BUFFERS = 64


def spin_plan(workers: int, cores: int) -> tuple[bool, int]:
    """Whether a session's client and workers spin before they sleep, and their allowance.

    A waiter spins only while the one it waits for may have a core (see
    rlmesh._spin). The client waits while workers step, a worker while the
    client (or a peer) works, so at most ``workers`` of the ``workers + 1``
    processes spin at once. With a core for each of them (``workers + 1 <=
    cores``) all spin. With a core per worker and none more (``workers ==
    cores``), all spin too: the spin yields the core every few polls, so the
    one with work takes it at once, and a hand-off costs no wake-up (a futex
    wake-up on a VM costs tens of microseconds, two per batch); the
    contention gate then tolerates one runnable task beyond the cores, the
    party's own (``allowance`` 1), and still stops every spin when a third
    party competes. With fewer cores than workers nobody spins: spinners
    would outnumber the cores.

    Returns:
        ``(spin, allowance)``: spin or never; the tasks beyond the cores the gate tolerates.
    """
    if cores < 2 or workers > cores:
        return False, 0
    return True, max(0, workers + 1 - cores)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One tensor leaf of a space: where it sits in a value, its per-lane shape and dtype."""

    path: Path
    shape: tuple[int, ...]
    dtype: str

    @property
    def lane_nbytes(self) -> int:
        """Bytes of one lane's value."""
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


def fast_path_leaves(spec: Any) -> list[Leaf] | None:
    """The leaves of a space as fixed-shape arrays, or None if it has a leaf that is not one (Text)."""
    out = []
    for path, node in leaves(spec):
        if node.kind in ("box", "multi_binary", "multi_discrete"):
            assert node.dtype is not None
            out.append(Leaf(path, tuple(int(d) for d in node.shape), str(node.dtype)))
        elif node.kind == "discrete":
            out.append(Leaf(path, (), "int64"))
        else:
            return None
    return out


@dataclasses.dataclass(frozen=True)
class Layout:
    """Every offset of a vector session segment (see the module docstring).

    Built by the server from the contract (:meth:`build`), sent to the client
    and the workers as a dict (:meth:`to_dict`) and read back by
    :meth:`from_dict`, which checks it against the segment size it was given.
    """

    num_envs: int
    groups: tuple[tuple[int, int], ...]  # per worker: [lo, hi) lanes
    buffers: int  # K leased buffers (plus the scratch buffer K)
    obs: tuple[Leaf, ...]
    act: tuple[Leaf, ...]
    same_step: bool
    size: int
    mask: int
    has_seed: int
    seeds: int
    options: int
    act_offsets: tuple[int, ...]
    errors: int
    buffer0: int
    buffer_size: int
    # Offsets inside one buffer.
    b_obs: tuple[int, ...]
    b_rewards: int
    b_terminated: int
    b_truncated: int
    b_info_len: int
    b_final_mask: int
    b_final_obs: tuple[int, ...]
    b_info: int

    @property
    def workers(self) -> int:
        """W, the number of worker processes."""
        return len(self.groups)

    @classmethod
    def build(cls, contract: EnvContract, workers: int, buffers: int = DEFAULT_BUFFERS) -> Layout:
        """The layout for ``contract`` served by ``workers`` processes.

        Raises:
            TypeError: a space has a leaf that is not a fixed-shape array (Text).
            ValueError: bad ``workers`` or ``buffers``.
        """
        n = contract.num_envs
        if not 1 <= workers <= n:
            raise ValueError(f"workers must be between 1 and num_envs={n}, got {workers}")
        if not 1 <= buffers <= MAX_BUFFERS:
            raise ValueError(f"buffers must be between 1 and {MAX_BUFFERS}")
        obs = fast_path_leaves(contract.observation_space)
        act = fast_path_leaves(contract.action_space)
        if obs is None or act is None:
            raise TypeError(
                "the vector fast path needs fixed-shape observation and action spaces "
                "(Box, Discrete, MultiBinary, MultiDiscrete, and Dict/Tuple of them); "
                'serve this env with vectorization_mode="sync"'
            )
        base, extra = divmod(n, workers)
        groups = []
        lo = 0
        for w in range(workers):
            hi = lo + base + (1 if w < extra else 0)
            groups.append((lo, hi))
            lo = hi
        at = _align(WORKERS + workers * WORKER_BLOCK)
        mask = at
        has_seed = _align(mask + n)
        seeds = _align(has_seed + n)
        options = _align(seeds + 8 * n)
        at = _align(options + 4 + OPTIONS_BYTES)
        act_offsets = []
        for leaf in act:
            act_offsets.append(at)
            at = _align(at + leaf.lane_nbytes * n)
        errors = at
        at = _align(errors + workers * ERROR_BYTES)
        # One buffer.
        b = 0
        b_obs = []
        for leaf in obs:
            b_obs.append(b)
            b = _align(b + leaf.lane_nbytes * n)
        b_rewards = b
        b_terminated = _align(b_rewards + 8 * n)
        b_truncated = _align(b_terminated + n)
        b_info_len = _align(b_truncated + n)
        b_final_mask = _align(b_info_len + 4 * n)
        b = _align(b_final_mask + n)
        same_step = contract.autoreset_mode == "SameStep"
        b_final = []
        if same_step:
            for leaf in obs:
                b_final.append(b)
                b = _align(b + leaf.lane_nbytes * n)
        b_info = b
        buffer_size = _align(b_info + INFO_BYTES * n)
        buffer0 = at
        size = buffer0 + (buffers + 1) * buffer_size
        return cls(
            num_envs=n,
            groups=tuple(groups),
            buffers=buffers,
            obs=tuple(obs),
            act=tuple(act),
            same_step=same_step,
            size=size,
            mask=mask,
            has_seed=has_seed,
            seeds=seeds,
            options=options,
            act_offsets=tuple(act_offsets),
            errors=errors,
            buffer0=buffer0,
            buffer_size=buffer_size,
            b_obs=tuple(b_obs),
            b_rewards=b_rewards,
            b_terminated=b_terminated,
            b_truncated=b_truncated,
            b_info_len=b_info_len,
            b_final_mask=b_final_mask,
            b_final_obs=tuple(b_final),
            b_info=b_info,
        )

    def worker_block(self, w: int) -> int:
        """The offset of worker ``w``'s block."""
        return WORKERS + w * WORKER_BLOCK

    def buffer(self, k: int) -> int:
        """The offset of output buffer ``k`` (``k == buffers`` is the scratch buffer)."""
        return self.buffer0 + k * self.buffer_size

    def worker_of(self, lane: int) -> int:
        """The worker that owns ``lane``."""
        for w, (lo, hi) in enumerate(self.groups):
            if lo <= lane < hi:
                return w
        raise ValueError(f"lane {lane} is out of range")

    def check_batch(self, k: int, size: int) -> tuple[int, int]:
        """The ``(offset, nbytes)`` of buffer ``k``, checked like a slab handle.

        A worker reports the buffer it wrote in shared memory a peer could
        scribble on: a value out of range, or a buffer past the segment's end,
        is refused before anything is read.

        Raises:
            InvalidHandle: ``k`` names no buffer, or the buffer lies outside
                a segment of ``size`` bytes.
        """
        if type(k) is not int or not 0 <= k <= self.buffers:
            raise InvalidHandle(f"batch handle names buffer {k!r}; the session has {self.buffers + 1}")
        offset = self.buffer(k)
        nbytes = self.buffer_size
        if offset < 0 or offset > size or nbytes > size - offset:
            raise InvalidHandle(f"batch [{offset}, +{nbytes}) lies outside the segment of {size} bytes")
        return offset, nbytes

    # -- the wire form ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The layout as msgpack-able data."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("obs", "act"):
                value = [[list(leaf.path), list(leaf.shape), leaf.dtype] for leaf in value]
            elif field.name == "groups":
                value = [list(g) for g in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Any, segment_size: int) -> Layout:
        """Read a layout a peer sent, checking that every field fits in ``segment_size`` bytes.

        Raises:
            ProtocolError: malformed, or a field outside the segment.
        """
        try:
            if not isinstance(data, dict):
                raise TypeError("not a map")
            kwargs: dict[str, Any] = {}
            for field in dataclasses.fields(cls):
                value = data[field.name]
                if field.name in ("obs", "act"):
                    value = tuple(Leaf(tuple(p), tuple(int(d) for d in s), str(t)) for p, s, t in value)
                    for leaf in value:
                        if leaf.dtype not in DTYPES or any(d < 0 for d in leaf.shape):
                            raise ValueError("bad leaf")
                elif field.name == "groups":
                    value = tuple((int(lo), int(hi)) for lo, hi in value)
                elif field.name == "same_step":
                    value = bool(value)
                elif isinstance(value, list):
                    value = tuple(int(v) for v in value)
                else:
                    value = int(value)
                kwargs[field.name] = value
            layout = cls(**kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed vector layout ({exc})") from None
        layout._check(segment_size)
        return layout

    def _check(self, segment_size: int) -> None:
        n = self.num_envs
        ok = (
            1 <= n <= 1 << 20
            and 1 <= self.buffers <= MAX_BUFFERS
            and self.size == segment_size
            and len(self.act_offsets) == len(self.act)
            and len(self.b_obs) == len(self.obs)
            and len(self.b_final_obs) == (len(self.obs) if self.same_step else 0)
        )
        lanes = 0
        for lo, hi in self.groups:
            ok = ok and lo == lanes and hi > lo
            lanes = hi
        ok = ok and lanes == n and len(self.groups) >= 1
        regions = [
            (self.worker_block(0), len(self.groups) * WORKER_BLOCK),
            (self.mask, n),
            (self.has_seed, n),
            (self.seeds, 8 * n),
            (self.options, 4 + OPTIONS_BYTES),
            (self.errors, len(self.groups) * ERROR_BYTES),
            (self.buffer0, (self.buffers + 1) * self.buffer_size),
        ]
        regions += [
            (off, leaf.lane_nbytes * n) for off, leaf in zip(self.act_offsets, self.act, strict=False)
        ]
        inner = [(self.b_rewards, 8 * n), (self.b_terminated, n), (self.b_truncated, n)]
        inner += [(self.b_info_len, 4 * n), (self.b_final_mask, n), (self.b_info, INFO_BYTES * n)]
        inner += [(off, leaf.lane_nbytes * n) for off, leaf in zip(self.b_obs, self.obs, strict=False)]
        inner += [(off, leaf.lane_nbytes * n) for off, leaf in zip(self.b_final_obs, self.obs, strict=False)]
        for off, nbytes in regions:
            ok = ok and HEADER <= off and off % 4 == 0 and nbytes <= segment_size - off
        for off, nbytes in inner:
            ok = ok and 0 <= off and off % 4 == 0 and nbytes <= self.buffer_size - off
        if not ok:
            raise ProtocolError("the vector layout does not fit its segment")


def composite_kinds(spec: Any, path: Path = ()) -> list[list[Any]]:
    """``[[path, "dict" | "tuple"], ...]`` for every composite node of a space (to rebuild values)."""
    out: list[list[Any]] = []
    kind = spec.kind
    if kind == "dict":
        out.append([list(path), "dict"])
        for key, child in spec._get("spaces"):
            out += composite_kinds(child, (*path, key))
    elif kind == "tuple":
        out.append([list(path), "tuple"])
        for i, child in enumerate(spec._get("spaces")):
            out += composite_kinds(child, (*path, i))
    return out


def tree_builder(
    paths: list[tuple[Any, ...]], kinds: dict[tuple[Any, ...], str]
) -> Callable[[list[Any]], Any]:
    """A function building a value (dicts, tuples as ``kinds`` says) from its leaves in ``paths`` order."""
    if len(paths) == 1 and not paths[0]:
        return lambda leaves: leaves[0]

    def finish(node: Any, prefix: tuple[Any, ...]) -> Any:
        if not isinstance(node, dict) or prefix not in kinds:
            return node
        children = {k: finish(v, (*prefix, k)) for k, v in node.items()}
        if kinds[prefix] == "tuple":
            return tuple(children[i] for i in range(len(children)))
        return children

    def build(leaves: list[Any]) -> Any:
        root: dict[Any, Any] = {}
        for path, leaf in zip(paths, leaves, strict=True):
            node = root
            for step in path[:-1]:
                node = node.setdefault(step, {})
            node[path[-1]] = leaf
        return finish(root, ())

    return build
