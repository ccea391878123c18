"""The client's side of the vector fast path: commands to the workers, results from shared memory.

:class:`Lanes` maps a vector session segment (:mod:`rlmesh.vector._layout`)
and drives the server's worker processes directly: it writes actions (and,
for a reset, seeds, a lane mask and options) into the segment, writes each
worker's command, rings the workers' doorbells and waits on its own until
the workers it commanded report done. Nothing goes through the server
process on a step. Issuing, waiting for and checking the workers' commands is
the base class in :mod:`rlmesh.vector._lane_commands`.

Results come from one output buffer per batch: observation leaves as
``(N, ...)`` arrays, rewards float64, flags bool, per-lane info. With
``copy=True`` (the numpy client, Gymnasium's writable arrays) every leaf is
copied out once. With ``copy=False`` the observation leaves are
:class:`rlmesh.Tensor` views of the buffer itself (zero-copy into
``numpy.from_dlpack`` or JAX); each view holds a lease on its buffer, and a
buffer is written again only once no view of it is alive. When all K
leased buffers are held, the step uses the scratch buffer and copies its
observations instead (correct, one copy more).

A step waits with a deadline; a dead worker gives :class:`WorkerError`
naming its lanes (the server's monitor marks it in the segment and rings
the client at once), unless the server's restart policy respawns it: the
wait then ends when the new worker answers, its lanes' new episodes flagged
in ``info["rlmesh_restarted"]``; a hung one :class:`OperationTimeout` naming the lanes
still outstanding, an exception in ``env.step`` a :class:`RemoteError`
naming the lane. After a RemoteError the session stays usable: the other
lanes of the call were stepped (or not, for the lanes of the failing worker
after the failing lane), as the env left them.

Lifetime: :meth:`close` unmaps the segment once no view of it is alive
(views the user holds stay valid). Idempotent; calls after it raise
ClosedError. A Lanes never closed is released by its segment's finalizer.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

from .._buffers import keepalive_view
from .._lifecycle import Lifecycle, State
from .._spin import SpinPolicy
from ..errors import BrokenError, BusyError, OperationTimeout, ProtocolError, WorkerError
from ..shm import Segment
from ..shm.doorbell import Doorbell
from ..specs import EnvContract
from ..tensor import Tensor
from ..values import encode_metadata
from . import _layout as L
from ._info import add_info, decode_info

# The workers' commands live in their own module (the base class); _U32 is
# re-exported here, where it was first defined.
from ._lane_commands import _U32 as _U32, _WorkerCommands

__all__ = ["Lanes", "StepResult"]
_OPEN = State.OPEN
StepResult = tuple[Any, Any, Any, Any, dict[str, Any]]


class _Lease:
    """Alive while a view of one output buffer is; pins the segment's mapping."""

    __slots__ = ("__weakref__",)


def _unpin(segment: Segment) -> None:
    segment.unpin()


class Lanes(_WorkerCommands):
    """The fast path of one vector session (see the module docstring).

    Args:
        segment: the session segment, mapped (attached by :meth:`attach`,
            or the server's own for its relay).
        layout: its layout, checked against the contract.
        contract: the vector contract.
        copy: copy observation leaves out (numpy) rather than lend views.
        spin: the longest spin before sleeping on the doorbell (0: never spin).
        spin_allowance: the session's own processes beyond the cores
            (``SpinPolicy``'s ``allowance``; see ``_layout.spin_plan``).
        check: called about every 50 ms while waiting; raises if the server is gone.
        owns_segment: close the segment with this object.
    """

    def __init__(
        self,
        segment: Segment,
        layout: L.Layout,
        contract: EnvContract,
        *,
        copy: bool,
        spin: float,
        spin_allowance: int = 0,
        check: Callable[[], None] | None = None,
        owns_segment: bool = True,
    ) -> None:
        import numpy as np

        expected = L.Layout.build(contract, layout.workers, layout.buffers)
        if expected != layout:
            raise ProtocolError("the vector layout the server sent does not match its contract")
        self._np = np
        self.segment = segment
        self.layout = layout
        self.num_envs = n = layout.num_envs
        self._copy = copy
        self._check = check
        self._owns = owns_segment
        self._life = Lifecycle("the vector lanes")
        buf = segment.buf
        self._buf = buf
        self._address = segment.address
        self._bell = Doorbell(buf, L.CLIENT_BELL, self._address)
        self._workers = [
            Doorbell(buf, layout.worker_block(w) + L.W_BELL, self._address) for w in range(layout.workers)
        ]
        self._spin = SpinPolicy(spin, allowance=spin_allowance)
        raw = np.frombuffer(buf, dtype=np.uint8)

        def view(offset: int, dtype: Any, shape: tuple[int, ...]) -> Any:
            count = 1
            for d in shape:
                count *= d
            nbytes = count * np.dtype(dtype).itemsize
            return raw[offset : offset + nbytes].view(dtype).reshape(shape)

        self._mask = view(layout.mask, np.uint8, (n,))
        self._has_seed = view(layout.has_seed, np.uint8, (n,))
        self._seeds = view(layout.seeds, np.int64, (n,))
        self._act = [
            view(off, leaf.dtype, (n, *leaf.shape))
            for off, leaf in zip(layout.act_offsets, layout.act, strict=True)
        ]
        self._act_paths = [leaf.path for leaf in layout.act]
        self._obs_leaves = layout.obs
        self._out: list[dict[str, Any]] = []
        for k in range(layout.buffers + 1):
            base = layout.buffer(k)
            self._out.append(
                {
                    "base": base,
                    "obs": [
                        view(base + off, leaf.dtype, (n, *leaf.shape))
                        for off, leaf in zip(layout.b_obs, layout.obs, strict=True)
                    ],
                    "obs_off": [base + off for off in layout.b_obs],
                    "rewards": view(base + layout.b_rewards, np.float64, (n,)),
                    "terminated": view(base + layout.b_terminated, np.bool_, (n,)),
                    "truncated": view(base + layout.b_truncated, np.bool_, (n,)),
                    "info_len": view(base + layout.b_info_len, np.uint32, (n,)),
                    "final_mask": view(base + layout.b_final_mask, np.bool_, (n,)),
                    "final_obs": [
                        view(base + off, leaf.dtype, (n, *leaf.shape))
                        for off, leaf in zip(layout.b_final_obs, layout.obs, strict=False)
                    ],
                    "info": view(base + layout.b_info, np.uint8, (n, L.INFO_BYTES)),
                }
            )
        kinds = {tuple(p): k for p, k in L.composite_kinds(contract.observation_space)}
        self._assemble = L.tree_builder([leaf.path for leaf in layout.obs], kinds)
        self._leases: list[Any] = [None] * layout.buffers
        self._no_info = bytes(4 * n)
        self._next_buffer = 0
        self._blocks = [layout.worker_block(w) for w in range(layout.workers)]
        self._seq = [_U32.unpack_from(buf, block + L.W_CMD_SEQ)[0] for block in self._blocks]
        self._all_terms = bytearray(self._pack_terms(list(enumerate(self._seq))))
        self._checked = [None] * (layout.buffers + 1)
        # The common case, one action leaf at the root (CartPole's Discrete, a Box):
        # its view, written straight from the batch; else None.
        self._act_root = self._act[0] if len(self._act_paths) == 1 and not self._act_paths[0] else None
        # One observation leaf at the root: a copied batch is that copy, not a tree.
        self._obs_root = len(layout.obs) == 1 and not layout.obs[0].path
        self._no_flags = bytes(n)
        self._all_masked = False
        #: The step in flight: ``(buffer, [(worker, seq), ...])``, between step_async and step_wait.
        self._step: tuple[int, list[tuple[int, int]]] | None = None
        #: Commands a call gave up on (its deadline passed): waited for before the next one.
        self._stale: list[tuple[int, int]] = []
        # send/recv: lanes sent and not received; per worker the command in flight and staged sends.
        self._pending: set[int] = set()
        self._busy: list[tuple[int, list[int]] | None] = [None] * layout.workers
        self._staged: list[list[tuple[list[int], list[Any]]]] = [[] for _ in range(layout.workers)]
        #: Batches delivered (each from one buffer, named by one checked handle).
        self.batches = 0
        self._life.watch(self, Segment.close_when_unpinned, segment) if owns_segment else None

    @classmethod
    def attach(
        cls,
        offer: Any,
        segment: Segment,
        contract: EnvContract,
        *,
        copy: bool,
        check: Callable[[], None] | None,
    ) -> Lanes:
        """Take over the segment a server offered (mapped during the handshake) and check its layout.

        The segment is closed if this fails.

        Raises:
            ProtocolError: a malformed offer or a layout that does not fit the segment or the contract.
        """
        try:
            if not isinstance(offer, dict):
                raise ProtocolError("malformed vector offer")
            layout = L.Layout.from_dict(offer.get("layout"), segment.size)
            spins, allowance = L.spin_plan(layout.workers, os.cpu_count() or 1)
            return cls(
                segment,
                layout,
                contract,
                copy=copy,
                spin=500e-6 if spins else 0.0,
                spin_allowance=allowance,
                check=check,
            )
        except BaseException:
            try:
                segment.close_when_unpinned()
            except BusyError:
                pass  # views of a half-built Lanes: the segment's finalizer unmaps it
            raise

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED."""
        return self._life.state

    @property
    def pending(self) -> list[int]:
        """Lanes sent with :meth:`send` and not yet received."""
        return sorted(self._pending)

    def close(self) -> None:
        """Stop using the fast path; the segment is unmapped once no view of it is alive. Idempotent."""
        if not self._life.begin_close():
            return
        try:
            self._life.forget()
            # The numpy views export the segment's buffer: drop them first, or it cannot be unmapped.
            self._out = []
            self._act = []
            self._act_root = None
            self._mask = self._has_seed = self._seeds = None
            if self._owns:
                try:
                    self.segment.close_when_unpinned()
                except BusyError:
                    pass  # a view is still alive somewhere: the segment's finalizer unmaps it later
        finally:
            self._life.finish_close()

    def _enter(self) -> None:
        self._life.check_open()
        if self._stale:
            stale, self._stale = self._stale, []
            self._wait(stale, None if not stale else 5.0, "an earlier call that timed out")

    # -- actions -------------------------------------------------------------------------

    def _action_leaves(self, actions: Any, count: int) -> list[Any]:
        np = self._np
        if len(self._act_paths) == 1 and not self._act_paths[0]:
            # One leaf at the root (CartPole's Discrete, a Box): no tree walk.
            arr = np.asarray(actions)
            if arr.shape == (count, *self.layout.act[0].shape):
                return [arr]
        out = []
        for path, leaf in zip(self._act_paths, self.layout.act, strict=True):
            value = actions
            try:
                for step in path:
                    value = value[step]
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"the actions lack the leaf {list(path)}") from None
            arr = np.asarray(value)
            if arr.shape != (count, *leaf.shape):
                got = arr.shape[0] if arr.ndim else "a scalar"
                if arr.ndim and arr.shape[0] != count:
                    raise ValueError(f"expected {count} batched values, got {got}")
                raise ValueError(f"expected actions of shape {(count, *leaf.shape)}, got {arr.shape}")
            out.append(arr)
        return out

    def _write_actions(self, leaves: list[Any], lanes: Any = None) -> None:
        np = self._np
        for view, arr in zip(self._act, leaves, strict=True):
            if lanes is None:
                np.copyto(view, arr, casting="same_kind")
            else:
                view[lanes] = arr.astype(view.dtype, casting="same_kind", copy=False)

    # -- step -------------------------------------------------------------------------------

    def _pick_buffer(self) -> int:
        if self._copy:
            return 0
        K = self.layout.buffers
        for i in range(K):
            k = (self._next_buffer + i) % K
            ref = self._leases[k]
            if ref is None or ref() is None:
                self._next_buffer = (k + 1) % K
                return k
        return K  # every leased buffer is held: the scratch buffer, copied out

    def start_step(self, actions: Any) -> None:
        """Send every lane's action to the workers (the first half of a step).

        Raises:
            ValueError: the wrong number of actions, or lanes in flight from :meth:`send`.
            TypeError: actions of a kind that cannot be cast to the action space's dtype.
        """
        if self._stale or self._life.state is not _OPEN:
            self._enter()
        if self._step is not None:
            raise ValueError("a step is already in flight: call step_wait() first")
        if self._pending:
            raise ValueError(f"lanes {sorted(self._pending)} were sent and not received: call recv() first")
        root: Any = self._act_root
        arr = self._np.asarray(actions) if root is not None else None
        if arr is not None and arr.shape == root.shape:
            self._np.copyto(root, arr, casting="same_kind")
        else:
            self._write_actions(self._action_leaves(actions, self.num_envs))
        if not self._all_masked:
            self._mask[:] = 1
            self._all_masked = True
        k = self._pick_buffer()
        self._step = (k, self._command_all(L.OP_STEP, k))

    def finish_step(self, timeout: float | None) -> tuple[StepResult, list[int]]:
        """Wait for the step :meth:`start_step` sent; its results and the lanes that ended.

        Raises:
            ValueError: no step in flight. WorkerError, RemoteError, OperationTimeout,
            BrokenError (the server is gone), InvalidHandle (a forged batch).
        """
        if self._life.state is not _OPEN:
            self._life.check_open()
        step = self._step
        if step is None:
            raise ValueError("no step in flight: call step_async() first")
        k, commands = step
        self._step = None
        self._collect_all(commands, k, timeout, "the vector step")
        return self._result(k)

    def _result(self, k: int) -> tuple[StepResult, list[int]]:
        """A step's results from buffer ``k`` (checked), and the lanes that ended."""
        out = self._out[k]
        if self._copy and self._obs_root:
            obs = out["obs"][0].copy()
        else:
            obs = self._obs(k)
        rewards = out["rewards"].copy()
        terminated = out["terminated"].copy()
        truncated = out["truncated"].copy()
        info = self._info(out, None)
        # Most batches end no episode: two bytes comparisons of the copies, not numpy's any().
        none = self._no_flags
        if terminated.tobytes() == none and truncated.tobytes() == none:
            done: list[int] = []
        else:
            done = (terminated | truncated).nonzero()[0].tolist()
        self.batches += 1
        return (obs, rewards, terminated, truncated, info), done

    def _obs(self, k: int) -> Any:
        out = self._out[k]
        if self._copy or k == self.layout.buffers:
            leaves = [v.copy() for v in out["obs"]]
            if self._copy:
                return self._assemble(leaves)
            return self._assemble([Tensor.wrap(a, a.shape, a.dtype.name) for a in leaves])
        lease = _Lease()
        self.segment.pin()
        weakref.finalize(lease, _unpin, self.segment)
        self._leases[k] = weakref.ref(lease)
        tensors = []
        for off, leaf in zip(out["obs_off"], self._obs_leaves, strict=True):
            nbytes = leaf.lane_nbytes * self.num_envs
            view = keepalive_view(self._address + off, nbytes, lease)
            tensors.append(
                Tensor.wrap(view, (self.num_envs, *leaf.shape), leaf.dtype, address=self._address + off)
            )
        return self._assemble(tensors)

    def _info(self, out: dict[str, Any], lanes: Any) -> dict[str, Any]:
        """The batched info of ``lanes`` (None: every lane) of one buffer; {} when there is none."""
        lens = out["info_len"]
        finals = out["final_mask"]
        index = range(self.num_envs) if lanes is None else lanes
        if lanes is None:
            # The common case, no lane has info: one bytes comparison (numpy's any() costs more).
            at = out["base"] + self.layout.b_info_len
            if self._buf[at : at + 4 * self.num_envs] == self._no_info:
                return {}
        elif not lens[lanes].any():
            return {}
        infos: dict[str, Any] = {}
        size = self.num_envs if lanes is None else len(lanes)
        for pos, lane in enumerate(index):
            length = int(lens[lane])
            if not length:
                continue
            if length > L.INFO_BYTES:
                raise ProtocolError(
                    f"lane {lane} reported {length} bytes of info; the layout holds {L.INFO_BYTES}"
                )
            value = decode_info(out["info"][lane, :length].tobytes())
            if self.layout.same_step and finals[lane]:
                if not (isinstance(value, list) and len(value) == 2):
                    raise ProtocolError(f"malformed final info of lane {lane}")
                final_info, value = value
                final_obs = self._assemble([v[lane].copy() for v in out["final_obs"]])
                infos = add_info(infos, {"final_obs": final_obs, "final_info": final_info}, pos, size)
            if not isinstance(value, dict):
                raise ProtocolError(f"malformed info of lane {lane}")
            infos = add_info(infos, value, pos, size)
        return infos

    def step(self, actions: Any, timeout: float | None) -> tuple[StepResult, list[int]]:
        """:meth:`start_step` then :meth:`finish_step`, in one go for the common case.

        The common case: numpy results, one action leaf and one observation leaf
        at the root, a batch of the action leaf's shape, nothing in flight.
        Anything else takes the two halves (which raise what they raise).
        """
        root: Any = self._act_root
        if (
            root is None
            or not self._copy
            or not self._obs_root
            or self._stale
            or self._step is not None
            or self._pending
            or self._life.state is not _OPEN
        ):
            self.start_step(actions)
            return self.finish_step(timeout)
        arr = self._np.asarray(actions)
        if arr.shape != root.shape:
            self.start_step(actions)
            return self.finish_step(timeout)
        if arr.dtype == root.dtype:
            root[...] = arr
        else:
            self._np.copyto(root, arr, casting="same_kind")
        # A view of the segment must not outlive this frame in a traceback (a raised
        # WorkerError the caller keeps would keep the segment mapped after close()).
        del root
        if not self._all_masked:
            self._mask[:] = 1
            self._all_masked = True
        commands = self._command_all(L.OP_STEP, 0)
        self._collect_all(commands, 0, timeout, "the vector step")
        return self._result(0)

    # -- reset ------------------------------------------------------------------------------

    def reset(self, seed: Any, options: Any, timeout: float | None) -> tuple[Any, dict[str, Any]]:
        """Reset every lane, or the lanes of ``options["reset_mask"]``, as Gymnasium's SyncVectorEnv.

        Args:
            seed: None, an int (lane i gets ``seed + i``) or a list of N ints or None.
            options: passed to every reset lane's ``env.reset``, without ``reset_mask``.
            timeout: the deadline in seconds (None: none).

        Raises:
            ValueError, TypeError: bad seeds, a bad ``reset_mask``, lanes in flight.
            WorkerError, RemoteError, OperationTimeout, BrokenError.
        """
        import msgpack

        np = self._np
        self._enter()
        if self._step is not None or self._pending:
            raise ValueError("lanes are in flight: finish the step (step_wait/recv) before reset()")
        n = self.num_envs
        if seed is None:
            seeds: list[Any] = [None] * n
        elif isinstance(seed, int) and not isinstance(seed, bool):
            seeds = [seed + i for i in range(n)]
        elif isinstance(seed, (list, tuple)):
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(
                    "If seeds are passed as a list the length must match "
                    f"num_envs={n} but got length={len(seeds)}."
                )
        else:
            raise TypeError(f"seed must be None, an int or a list of ints, got {type(seed).__name__}")
        for s in seeds:
            if s is not None and (isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0):
                raise ValueError(f"seeds must be non-negative ints or None, got {s!r}")
        mask = None
        if options is not None:
            if not isinstance(options, dict):
                raise TypeError("options must be a dict")
            options = dict(options)
            if "reset_mask" in options:
                mask = self._reset_mask(options.pop("reset_mask"))
        blob = b"" if options is None else msgpack.packb(encode_metadata(options))
        if len(blob) > L.OPTIONS_BYTES:
            raise ValueError(f"reset options are {len(blob)} bytes of msgpack; at most {L.OPTIONS_BYTES}")
        self._has_seed[:] = [s is not None for s in seeds]
        self._seeds[:] = [0 if s is None else int(s) for s in seeds]
        # Length 0 means None; an empty dict still encodes to one byte.
        _U32.pack_into(self._buf, self.layout.options, len(blob))
        if blob:
            self._buf[self.layout.options + 4 : self.layout.options + 4 + len(blob)] = blob
        if mask is None:
            self._mask[:] = 1
            self._all_masked = True
        else:
            self._mask[:] = mask
            self._all_masked = False
        k = self._pick_buffer()
        commands = self._command_all(L.OP_RESET, k)
        self._collect(commands, k, timeout, "the vector reset")
        out = self._out[k]
        obs = self._obs(k)
        lanes = None if mask is None else mask.nonzero()[0].tolist()
        info = self._info(out, None) if lanes is None else self._masked_info(out, lanes)
        self.batches += 1
        return obs, info

    def _masked_info(self, out: dict[str, Any], lanes: list[int]) -> dict[str, Any]:
        infos: dict[str, Any] = {}
        for lane in lanes:
            length = int(out["info_len"][lane])
            if length:
                value = decode_info(out["info"][lane, : min(length, L.INFO_BYTES)].tobytes())
                if isinstance(value, dict):
                    infos = add_info(infos, value, lane, self.num_envs)
        return infos

    def _reset_mask(self, mask: Any) -> Any:
        np = self._np
        n = self.num_envs
        if isinstance(mask, (list, tuple)):
            mask = np.array(mask)
        elif isinstance(mask, Tensor):
            mask = np.asarray(mask)
        if not isinstance(mask, np.ndarray):
            mask = np.asarray(mask)
        if mask.shape != (n,):
            raise ValueError(f"`options['reset_mask']` must have shape `({n},)`, got {mask.shape}")
        if mask.dtype != np.bool_:
            raise TypeError(f"`options['reset_mask']` must have `dtype=np.bool_`, got {mask.dtype}")
        if not mask.any():
            raise ValueError(
                "`options['reset_mask']` must contain a boolean array with at least one True value, "
                f"got reset_mask={mask}"
            )
        return mask

    # -- send / recv ------------------------------------------------------------------------

    def send(self, actions: Any, env_ids: Any = None) -> None:
        """Send actions to some lanes (all by default); they step while the caller works.

        Args:
            actions: a batch of ``len(env_ids)`` actions, in ``env_ids`` order.
            env_ids: the lanes (ints in ``range(num_envs)``, no repeats, none
                already sent and not yet received); None for every lane.

        Raises:
            ValueError: bad ``env_ids``, lanes already in flight, the wrong number of actions.
        """
        np = self._np
        self._enter()
        if self._step is not None:
            raise ValueError("a step is in flight: call step_wait() first")
        n = self.num_envs
        if env_ids is None:
            ids = list(range(n))
        else:
            raw = np.asarray(env_ids)
            if raw.ndim != 1 or raw.dtype.kind not in "iu" or raw.size == 0:
                raise ValueError("env_ids must be a non-empty list of lane indices")
            ids = [int(i) for i in raw]
            bad = [i for i in ids if not 0 <= i < n]
            if bad:
                raise ValueError(f"env_ids {bad} are out of range: the endpoint serves {n} envs")
            if len(set(ids)) != len(ids):
                raise ValueError("env_ids holds a lane twice")
        again = sorted(self._pending.intersection(ids))
        if again:
            raise ValueError(f"lanes {again} were sent and not received yet: recv() them first")
        leaves = self._action_leaves(actions, len(ids))
        by_worker: dict[int, list[int]] = {}
        for pos, lane in enumerate(ids):
            by_worker.setdefault(self.layout.worker_of(lane), []).append(pos)
        for w, positions in by_worker.items():
            lanes = [ids[p] for p in positions]
            rows = [leaf[positions] for leaf in leaves]
            if self._busy[w] is None:
                self._dispatch(w, lanes, rows)
            else:
                self._staged[w].append((lanes, rows))
        self._pending.update(ids)

    def _dispatch_staged(self, w: int) -> None:
        staged, self._staged[w] = self._staged[w], []
        if staged:
            np = self._np
            merged = [lane for lanes, _ in staged for lane in lanes]
            rows = [np.concatenate([r[i] for _, r in staged]) for i in range(len(self._act))]
            self._dispatch(w, merged, rows)

    def _dispatch(self, w: int, lanes: list[int], rows: list[Any]) -> None:
        lo, hi = self.layout.groups[w]
        self._write_actions(rows, lanes)
        self._mask[lo:hi] = 0
        self._mask[lanes] = 1
        self._all_masked = False
        _, seq = self._command(w, L.OP_STEP, self.layout.buffers)
        self._busy[w] = (seq, lanes)

    def poll(self, timeout: float | None, min_envs: int | None = None) -> bool:
        """Whether what is in flight is done: True when :meth:`finish_step` (or :meth:`recv`) would not wait.

        True also when collecting would raise at once (a worker lost, an
        env error, the server gone). Consumes nothing.

        Args:
            timeout: seconds to wait; 0 looks once; None waits until ready.
            min_envs: with lanes sent by :meth:`send`, how many must be ready
                (default: every lane sent).

        Raises:
            ValueError: nothing in flight, or a bad ``min_envs``. ClosedError.
        """
        self._life.check_open()
        if self._step is not None:
            if min_envs is not None:
                raise ValueError("min_envs is for lanes sent with send(), not a step_async()")
            terms = self._terms(self._step[1])
            ready: Callable[[], bool] | None = None
        elif self._pending:
            outstanding = len(self._pending)
            want = outstanding if min_envs is None else min_envs
            if isinstance(want, bool) or not isinstance(want, int) or not 1 <= want <= outstanding:
                raise ValueError(
                    f"min_envs must be between 1 and the {outstanding} lanes in flight, got {min_envs!r}"
                )
            buf, unpack = self._buf, _U32.unpack_from
            blocks = [self.layout.worker_block(w) for w in range(self.layout.workers)]

            def counted() -> bool:
                count = 0
                for w, busy in enumerate(self._busy):
                    if busy is not None and (
                        unpack(buf, blocks[w] + L.W_DONE_SEQ)[0] == busy[0]
                        or unpack(buf, blocks[w] + L.W_STATUS)[0] != L.STATUS_OK
                    ):
                        count += len(busy[1])
                return count >= want

            terms, ready = b"", counted
        else:
            raise ValueError("nothing in flight: call step_async() or send() first")
        try:
            if ready is None:
                self._bell.wait_words(terms, timeout, spin=self._spin, check=self._check)
            else:
                self._bell.wait(ready, timeout, spin=self._spin, check=self._check)
        except OperationTimeout:
            check = self._check
            if check is not None:
                try:
                    check()
                except BrokenError:
                    return True  # the server is gone: collecting raises at once
            return False
        except BrokenError:
            return True
        return True

    def recv(
        self, min_envs: int | None, timeout: float | None
    ) -> tuple[Any, Any, Any, Any, dict[str, Any], Any]:
        """Results of the first lanes ready (every lane ready at that time, at least ``min_envs``).

        Returns:
            ``(obs, rewards, terminated, truncated, info, env_ids)``, batched
            over the lanes returned, in ascending lane order; lanes of a slow
            worker never hold back the others, and a lane not returned now is
            returned by a later call.

        Raises:
            ValueError: nothing sent, or ``min_envs`` out of range.
            WorkerError, RemoteError (that worker's lanes count as received),
            OperationTimeout, BrokenError.
        """
        np = self._np
        self._enter()
        if not self._pending:
            raise ValueError("recv() with nothing sent: call send() first")
        outstanding = len(self._pending)
        if min_envs is None:
            min_envs = outstanding
        if isinstance(min_envs, bool) or not isinstance(min_envs, int) or not 1 <= min_envs <= outstanding:
            raise ValueError(
                f"min_envs must be between 1 and the {outstanding} lanes in flight, got {min_envs!r}"
            )
        buf, unpack = self._buf, _U32.unpack_from
        blocks = [self.layout.worker_block(w) for w in range(self.layout.workers)]

        def finished() -> list[int]:
            out = []
            for w, busy in enumerate(self._busy):
                if busy is not None and (
                    unpack(buf, blocks[w] + L.W_DONE_SEQ)[0] == busy[0]
                    or unpack(buf, blocks[w] + L.W_STATUS)[0] == L.STATUS_LOST
                ):
                    out.append(w)
            return out

        def enough() -> bool:
            count = 0
            for w in finished():
                busy = self._busy[w]
                count += 0 if busy is None else len(busy[1])
            return count >= min_envs

        try:
            self._bell.wait(enough, timeout, spin=self._spin, check=self._check)
        except OperationTimeout:
            late = sorted(lane for busy in self._busy if busy is not None for lane in busy[1])
            raise OperationTimeout(
                f"recv() timed out after {timeout:.3g}s with lanes {late} still outstanding", timeout=timeout
            ) from None
        ready = finished()
        K = self.layout.buffers
        # A worker that failed is taken alone, before anything else is consumed: the
        # lanes of the workers that did not fail stay ready for the next recv (nothing lost).
        for w in ready:
            status = unpack(buf, blocks[w] + L.W_STATUS)[0]
            if status != L.STATUS_OK:
                ready = [w]
                break
        lanes: list[int] = []
        for w in ready:
            busy = self._busy[w]
            assert busy is not None
            self._busy[w] = None
            self._pending.difference_update(busy[1])
            try:
                self._raise_for([(w, busy[0])])
                self._batch([(w, busy[0])], K)
            except WorkerError:
                self._staged[w] = []
                raise
            except BaseException:  # an env error: that worker's lanes count as received
                self._dispatch_staged(w)
                raise
            lanes.extend(busy[1])
            self._dispatch_staged(w)
        lanes.sort()
        idx = np.array(lanes, dtype=np.int64)
        out = self._out[K]
        leaves = [v[idx] for v in out["obs"]]
        if self._copy:
            obs = self._assemble(leaves)
        else:
            obs = self._assemble([Tensor.wrap(a, a.shape, a.dtype.name) for a in leaves])
        info = self._info(out, lanes)
        self.batches += 1
        return obs, out["rewards"][idx], out["terminated"][idx], out["truncated"][idx], info, idx
