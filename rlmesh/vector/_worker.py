"""A vector worker process: steps one contiguous group of lanes, writing into the session segment.

Started by :class:`rlmesh.vector.pool.WorkerPool` as ``python -m
rlmesh.vector._worker FD`` (a fresh interpreter, never a fork), where FD is
its end of a control socketpair. The server sends one configuration frame
(the segment, the layout, the lanes, the env source as data, the parent's
``sys.path``); the worker builds its envs, maps the segment and answers
``["ready", pid]`` (or ``["error", type, message, traceback]``).

Then it waits on its doorbell for commands the client writes into its block
(:mod:`rlmesh.vector._layout`): STEP or RESET over the lanes the mask marks,
results straight into the output buffer the command names, then ``done_seq``
and a ring of the client's doorbell. A step of every lane of the group with
one scalar action leaf and one observation leaf at the root is looped in C
(``rlmesh._native.step_lanes``), which hands a lane back to the Python code
whenever its result needs more than a copy (docs/internals.md). Control messages (render, close) come
on the socket, announced by the block's ``ctl`` word and a ring.

It dies with its server: ``PR_SET_PDEATHSIG`` (SIGKILL) is set first thing,
and while idle it checks every 100 ms that its parent is still the same
process and that the control socket has not reached EOF.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import select
import signal
import socket
import struct
import sys
import traceback
from typing import Any

from .._native import step_lanes
from ._layout import tree_builder

__all__ = ["main", "resolve_reference"]

# step_lanes' outcomes (rlmesh/_native_ring.c).
_LANES_DONE, _LANES_STEP, _LANES_RESET, _LANES_ERROR, _LANES_PYTHON = range(5)

_U32 = struct.Struct("<I")
#: A command's words from ``op``: op, buf, ctl, wake (see rlmesh.vector._layout).
_CMD = struct.Struct("<IIII")
PR_SET_PDEATHSIG = 1
#: How often an idle worker checks that its server is alive.
WATCHDOG_INTERVAL = 0.1


def resolve_reference(ref: str) -> Any:
    """The object a ``"module:qualname"`` reference names.

    Raises:
        ImportError: the module cannot be imported. AttributeError: no such name.
        ValueError: not a ``module:qualname`` string.
    """
    module_name, sep, qualname = ref.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"expected 'module:qualname', got {ref!r}")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _set_pdeathsig(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the watchdog still runs
        pass
    if os.getppid() != parent:  # the server died before the prctl took effect
        os._exit(1)


def _make_env(source: dict[str, Any]) -> Any:
    if source["kind"] == "gym":
        import gymnasium

        return gymnasium.make(source["id"], **source.get("kwargs", {}))
    factory = resolve_reference(source["ref"])
    return factory(**source.get("kwargs", {}))


def _getter(path: list[Any]) -> Any:
    if not path:
        return None

    def get(value: Any) -> Any:
        for step in path:
            value = value[step]
        return value

    return get


class Worker:
    """The command loop of one worker (see the module docstring)."""

    def __init__(self, sock: socket.socket, config: dict[str, Any]) -> None:
        import numpy as np

        from .._deadline import Deadline  # noqa: F401 - imported early: the wait loop uses it
        from .._spin import SpinPolicy
        from ..shm import Segment
        from ..shm.doorbell import Doorbell, fence
        from . import _layout as L

        self.np = np
        self.L = L
        self.fence = fence
        self.sock = sock
        self.parent = int(config["parent"])
        self.index = int(config["index"])
        if config.get("memfd"):
            # The session's segment is a sealed memfd, inherited on this descriptor.
            self.segment = Segment.attach_memfd(int(config["segment_fd"]), int(config["size"]))
        elif config.get("segment_fd") is not None:
            # A pool with a restart policy passes the segment's descriptor: a
            # respawned worker must map it after the name was unlinked.
            self.segment = Segment.attach_fd(
                int(config["segment_fd"]), config["segment"], int(config["size"])
            )
        else:
            self.segment = Segment.attach(config["segment"], int(config["size"]))
        self.layout = layout = L.Layout.from_dict(config["layout"], self.segment.size)
        self.lo, self.hi = layout.groups[self.index]
        self.mode = str(config["autoreset_mode"])
        self.kinds = {tuple(k): v for k, v in config["kinds"]}
        buf = self.segment.buf
        address = self.segment.address
        self.buf = buf
        self.block = layout.worker_block(self.index)
        self.bell = Doorbell(buf, self.block + L.W_BELL, address)
        self.client_bell = Doorbell(buf, L.CLIENT_BELL, address)
        self.spin = SpinPolicy(float(config["spin"]), allowance=int(config.get("spin_allowance", 0)))
        self.others = [layout.worker_block(w) for w in range(layout.workers) if w != self.index]
        n = layout.num_envs
        raw = np.frombuffer(buf, dtype=np.uint8)
        self.raw = raw

        def view(offset: int, count: int, dtype: Any, shape: tuple[int, ...]) -> Any:
            itemsize = np.dtype(dtype).itemsize
            return raw[offset : offset + count * itemsize].view(dtype).reshape(shape)

        lanes = self.hi - self.lo
        self.mask = view(layout.mask, n, np.uint8, (n,))
        self.has_seed = view(layout.has_seed, n, np.uint8, (n,))
        self.seeds = view(layout.seeds, n, np.int64, (n,))
        self.actions = [
            view(off, n * max(1, _prod(leaf.shape)), leaf.dtype, (n, *leaf.shape))
            for off, leaf in zip(layout.act_offsets, layout.act, strict=False)
        ]
        self.buffers = []
        for k in range(layout.buffers + 1):
            base = layout.buffer(k)
            self.buffers.append(
                {
                    "obs": [
                        view(base + off, n * max(1, _prod(leaf.shape)), leaf.dtype, (n, *leaf.shape))
                        for off, leaf in zip(layout.b_obs, layout.obs, strict=False)
                    ],
                    "rewards": view(base + layout.b_rewards, n, np.float64, (n,)),
                    "terminated": view(base + layout.b_terminated, n, np.bool_, (n,)),
                    "truncated": view(base + layout.b_truncated, n, np.bool_, (n,)),
                    "info_len": view(base + layout.b_info_len, n, np.uint32, (n,)),
                    "final_mask": view(base + layout.b_final_mask, n, np.bool_, (n,)),
                    "final_obs": [
                        view(base + off, n * max(1, _prod(leaf.shape)), leaf.dtype, (n, *leaf.shape))
                        for off, leaf in zip(layout.b_final_obs, layout.obs, strict=False)
                    ],
                    "info": view(base + layout.b_info, n * L.INFO_BYTES, np.uint8, (n, L.INFO_BYTES)),
                    # Where this group's rewards and flags go (byte offsets in the segment).
                    "obs_at": base + layout.b_obs[0] + self.lo * layout.obs[0].lane_nbytes,
                    "rewards_at": base + layout.b_rewards + 8 * self.lo,
                    "terminated_at": base + layout.b_terminated + self.lo,
                    "truncated_at": base + layout.b_truncated + self.lo,
                    "final_at": base + layout.b_final_mask + self.lo,
                    # Whether this worker knows its lanes' info_len (final_mask) in this
                    # buffer are all zero, as its last command left them: a step with no
                    # info (no final observation) then skips rewriting them. Unknown at
                    # first (a respawned worker inherits whatever is there).
                    "info_clean": False,
                    "final_clean": False,
                }
            )
        self.obs_get = [_getter(list(leaf.path)) for leaf in layout.obs]
        self.act_paths = [list(leaf.path) for leaf in layout.act]
        self.build_action = tree_builder([tuple(path) for path in self.act_paths], self.kinds)
        self.act_scalar = [leaf.shape == () for leaf in layout.act]
        # The common case (one scalar action leaf, one observation leaf at the root)
        # skips the tree walks: a few hundred nanoseconds a lane.
        self.simple_action = self.act_scalar == [True] and not self.act_paths[0]
        self.simple_obs = len(layout.obs) == 1 and self.obs_get[0] is None
        self.next_step = self.mode == "NextStep"
        self.same_step = self.mode == "SameStep"
        self.disabled = self.mode == "Disabled"
        count = self.hi - self.lo
        #: A command covers every lane of the group when its mask slice is all ones.
        self.mask_at = layout.mask + self.lo
        self.all_lanes = b"\x01" * count
        #: The group's rewards (f64), packed in one call.
        self.pack_rewards = struct.Struct(f"<{count}d")
        self.no_info = [0] * count
        self.no_finals = bytes(count)
        # The native loop (step_lanes) takes the common case: a scalar action leaf, one
        # observation leaf at the root. Its observations are copied when they export a
        # C-contiguous buffer of exactly this format and shape; anything else is Python's.
        self.native = self.simple_action and self.simple_obs
        if self.native:
            leaf = layout.obs[0]
            self.obs_format = np.zeros(leaf.shape, leaf.dtype).data.format
            self.obs_shape = tuple(leaf.shape)
            self.obs_nbytes = leaf.lane_nbytes
        self.native_mode = {"NextStep": 0, "SameStep": 1, "Disabled": 2}[self.mode]
        from ._info import encode_final, encode_info

        self._encode_final, self._encode_info = encode_final, encode_info
        self.envs = [_make_env(config["source"]) for _ in range(lanes)]
        self.autoreset = [False] * lanes
        self.last_obs: list[Any] = [None] * lanes
        #: A respawned worker's lanes: their fresh episode's (observation, info), reported
        #: (flagged ``rlmesh_restarted``) by the first command that covers each lane.
        self.fresh: list[tuple[Any, dict[str, Any]] | None] = [None] * lanes
        if config.get("restarted"):
            # A worker that replaces a dead one: every lane starts a new, unseeded
            # episode now (so a render works at once), and a command the client wrote
            # for the dead worker (cmd_seq ahead of done_seq) is served first.
            for j, env in enumerate(self.envs):
                obs, info = env.reset()
                self.last_obs[j] = obs
                self.fresh[j] = (obs, dict(info or {}))
            self.last_seq = _U32.unpack_from(buf, self.block + L.W_DONE_SEQ)[0]
        else:
            self.last_seq = _U32.unpack_from(buf, self.block + L.W_CMD_SEQ)[0]
        self.any_fresh = any(f is not None for f in self.fresh)

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        from ..errors import OperationTimeout
        from ..shm.doorbell import WORD_NE, word_terms

        L = self.L
        buf, block = self.buf, self.block
        unpack = _U32.unpack_from
        cmd_at, ctl_at = block + L.W_CMD_SEQ, block + L.W_CTL
        wait = self.bell.wait_words
        # Ready: a new command (cmd_seq moved on) or a control message (ctl set): one
        # group of two terms; only the sequence number changes between commands.
        template = word_terms([[(cmd_at, WORD_NE, 0), (ctl_at, WORD_NE, 0)]])
        terms = bytearray(template)
        terms_seq = -1
        while True:
            if terms_seq != self.last_seq:
                terms_seq = self.last_seq
                _U32.pack_into(terms, 8, terms_seq)
            try:
                wait(terms, WATCHDOG_INTERVAL, spin=self.spin)
            except OperationTimeout:
                self._watchdog()
                continue
            if unpack(buf, ctl_at)[0]:
                _U32.pack_into(buf, ctl_at, 0)
                if not self._control():
                    return
            seq = unpack(buf, cmd_at)[0]
            if seq != self.last_seq:
                self.last_seq = seq
                self._command(seq)

    def _watchdog(self) -> None:
        if os.getppid() != self.parent:
            self._exit()
        readable, _, _ = select.select([self.sock], [], [], 0)
        if readable:
            try:
                data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._exit()
            if not self._control():
                self._exit()

    def _exit(self) -> None:
        for env in self.envs:
            try:
                env.close()
            except Exception:
                pass
        os._exit(0)

    def _control(self) -> bool:
        """Serve control messages waiting on the socket; False to stop."""
        from ._control import recv_msg, send_msg

        while True:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return True
            try:
                msg = recv_msg(self.sock, 5.0)
            except Exception:
                return False
            op = msg[0] if isinstance(msg, list) and msg else None
            if op == "close":
                for env in self.envs:
                    try:
                        env.close()
                    except Exception:
                        pass
                self.envs = []
                send_msg(self.sock, ["ok"], 5.0)
                return False
            if op == "render":
                try:
                    frame = self.envs[int(msg[1]) - self.lo].render()
                    reply = ["ok", _encode_frame(self.np, frame)]
                except Exception as exc:
                    reply = ["error", _qualname(exc), str(exc), traceback.format_exc()]
                send_msg(self.sock, reply, 30.0)
            else:
                send_msg(self.sock, ["error", "ValueError", f"unknown control message {op!r}", ""], 5.0)

    # -- commands ------------------------------------------------------------------------

    def _command(self, seq: int) -> None:
        L = self.L
        buf, block = self.buf, self.block
        op, k, _, wake = _CMD.unpack_from(buf, block + L.W_OP)
        status, err = L.STATUS_OK, b""
        try:
            if not 0 <= k <= self.layout.buffers:
                raise ValueError(f"the client named output buffer {k}")
            if op == L.OP_STEP:
                self._step(self.buffers[k])
            elif op == L.OP_RESET:
                self._reset(self.buffers[k])
            else:
                raise ValueError(f"unknown vector command {op}")
        except _LaneError as exc:
            status, err = L.STATUS_ERROR, exc.record
        except Exception as exc:
            status, err = L.STATUS_ERROR, _record(exc, -1)
        if err:
            err = err[: L.ERROR_BYTES]
            start = self.layout.errors + self.index * L.ERROR_BYTES
            buf[start : start + len(err)] = err
        _U32.pack_into(buf, block + L.W_ERR_LEN, len(err))
        _U32.pack_into(buf, block + L.W_STATUS, status)
        _U32.pack_into(buf, block + L.W_DONE_BUF, k)
        _U32.pack_into(buf, block + L.W_DONE_SEQ, seq)
        # Is a peer still busy? The fence orders this done_seq before reading theirs, and
        # each peer does the same: of two workers finishing together at least one sees
        # the other done (Dekker), so the last one always rings.
        last = True
        if self.others:
            self.fence()
            unpack = _U32.unpack_from
            for other in self.others:
                if unpack(buf, other + L.W_CMD_SEQ)[0] != unpack(buf, other + L.W_DONE_SEQ)[0]:
                    last = False
                    break
        if last or wake != L.WAKE_LAST:
            self.client_bell.ring()

    def _lane_action(self, i: int) -> Any:
        leaves = []
        for arr, scalar in zip(self.actions, self.act_scalar, strict=False):
            leaves.append(arr[i] if scalar else arr[i].copy())
        return self.build_action(leaves)

    def _write_obs(self, views: list[Any], i: int, obs: Any) -> None:
        if len(views) == 1 and self.obs_get[0] is None:
            views[0][i] = obs
            return
        for view, get in zip(views, self.obs_get, strict=False):
            view[i] = get(obs)

    def _write_info(self, out: dict[str, Any], i: int, blob: bytes) -> int:
        n = len(blob)
        if n > self.L.INFO_BYTES:
            raise ValueError(
                f"the info of lane {i} is {n} bytes of msgpack, more than the {self.L.INFO_BYTES} "
                "the vector fast path holds per lane"
            )
        if n:
            out["info"][i, :n] = self.np.frombuffer(blob, dtype=self.np.uint8)
        return n

    def _step(self, out: dict[str, Any]) -> None:
        lo, hi = self.lo, self.hi
        count = hi - lo
        buf = self.buf
        mask_at = self.mask_at
        if buf[mask_at : mask_at + count] == self.all_lanes:
            # Every lane of the group (a step of every lane): one bytes comparison.
            if self.native and not self.any_fresh:
                self._step_native(out)
                return
            lanes: Any = range(count)
        else:
            lanes = [j for j, m in enumerate(self.mask[lo:hi].tolist()) if m]
        rewards = [0.0] * count
        terms = [False] * count
        truncs = [False] * count
        lens: list[int] | None = None
        finals: list[bool] | None = None
        next_step, same_step, disabled = self.next_step, self.same_step, self.disabled
        simple_action, simple_obs = self.simple_action, self.simple_obs
        action0 = self.actions[0]
        obs_views = out["obs"]
        obs0 = obs_views[0]
        autoreset, envs, last_obs = self.autoreset, self.envs, self.last_obs
        fresh = self.fresh if self.any_fresh else None
        try:
            for j in lanes:
                i = lo + j
                env = envs[j]
                final = False
                try:
                    if fresh is not None and fresh[j] is not None:
                        # The lane's env was rebuilt by a restart: this step reports its new
                        # episode (the reset observation, reward 0, no end), not a step.
                        obs, info = self._take_fresh(j)
                        reward, term, trunc = 0.0, False, False
                    elif next_step and autoreset[j]:
                        obs, info = env.reset()
                        reward, term, trunc = 0.0, False, False
                    else:
                        if disabled and autoreset[j]:
                            raise AssertionError(
                                f"lane {i} ended its episode and autoreset is Disabled: reset it "
                                "(reset(options={'reset_mask': mask})) before stepping it again"
                            )
                        # action0[i]: a numpy scalar, what SyncVectorEnv hands env.step too.
                        action = action0[i] if simple_action else self._lane_action(i)
                        obs, reward, term, trunc, info = env.step(action)
                        term, trunc = bool(term), bool(trunc)
                        if same_step and (term or trunc):
                            self._write_obs(out["final_obs"], i, obs)
                            final_info = info
                            obs, info = env.reset()
                            final = True
                            if finals is None:
                                finals = [False] * count
                            finals[j] = True
                            if lens is None:
                                lens = [0] * count
                            lens[j] = self._write_info(out, i, self._encode_final(final_info, info))
                    autoreset[j] = term or trunc
                    last_obs[j] = obs
                    if simple_obs:
                        obs0[i] = obs
                    else:
                        self._write_obs(obs_views, i, obs)
                    rewards[j] = float(reward)
                    terms[j] = term
                    truncs[j] = trunc
                    if info and not final:
                        if lens is None:
                            lens = [0] * count
                        lens[j] = self._write_info(out, i, self._encode_info(info))
                except Exception as exc:
                    raise _LaneError(_record(exc, i)) from exc
        finally:
            self._store_results(out, rewards, terms, truncs, lens, finals)

    def _step_native(self, out: dict[str, Any]) -> None:
        """:meth:`_step` for every lane of the group in the common case, looped in C.

        ``step_lanes`` steps the lanes and writes each one's observation, reward and
        flags straight into the buffer; a lane it cannot finish (an info to encode,
        SameStep's end, an observation to cast, an exception) comes back here with
        what the env returned and is finished as the Python loop does it, and the
        loop goes on from the next lane.
        """
        lo, hi = self.lo, self.hi
        count = hi - lo
        buf, envs, autoreset, last_obs = self.buf, self.envs, self.autoreset, self.last_obs
        action0 = self.actions[0]
        obs_at, nbytes = out["obs_at"], self.obs_nbytes
        lens: list[int] | None = None
        finals: list[bool] | None = None
        j = 0
        try:
            while True:
                j, outcome, value = step_lanes(
                    envs,
                    autoreset,
                    last_obs,
                    action0,
                    lo,
                    j,
                    buf,
                    obs_at,
                    nbytes,
                    self.obs_format,
                    self.obs_shape,
                    out["rewards_at"],
                    out["terminated_at"],
                    out["truncated_at"],
                    self.native_mode,
                )
                if outcome == _LANES_DONE:
                    break
                i = lo + j
                final = False
                try:
                    if outcome == _LANES_ERROR:
                        raise value
                    if outcome == _LANES_PYTHON:
                        raise AssertionError(
                            f"lane {i} ended its episode and autoreset is Disabled: reset it "
                            "(reset(options={'reset_mask': mask})) before stepping it again"
                        )
                    if outcome == _LANES_RESET:
                        obs, info = value
                        reward, term, trunc = 0.0, False, False
                    else:
                        obs, reward, term, trunc, info = value
                        term, trunc = bool(term), bool(trunc)
                        if self.same_step and (term or trunc):
                            self._write_obs(out["final_obs"], i, obs)
                            final_info = info
                            obs, info = envs[j].reset()
                            final = True
                            if finals is None:
                                finals = [False] * count
                            finals[j] = True
                            if lens is None:
                                lens = [0] * count
                            lens[j] = self._write_info(out, i, self._encode_final(final_info, info))
                    autoreset[j] = term or trunc
                    last_obs[j] = obs
                    self._write_obs(out["obs"], i, obs)
                    out["rewards"][i] = float(reward)
                    out["terminated"][i] = term
                    out["truncated"][i] = trunc
                    if info and not final:
                        if lens is None:
                            lens = [0] * count
                        lens[j] = self._write_info(out, i, self._encode_info(info))
                except Exception as exc:
                    raise _LaneError(_record(exc, i)) from exc
                j += 1
        finally:
            self._store_infos(out, lens, finals)

    def _store_results(
        self,
        out: dict[str, Any],
        rewards: list[float],
        terms: list[bool],
        truncs: list[bool],
        lens: list[int] | None,
        finals: list[bool] | None,
    ) -> None:
        """The group's rewards, flags, info lengths and final masks, a few stores for all lanes.

        Lanes outside the command get zeros: nobody reads them from this buffer.
        ``lens``/``finals`` None means all zero: skipped when the buffer already
        holds zeros there from this worker's last command.
        """
        buf = self.buf
        lo, hi = self.lo, self.hi
        count = hi - lo
        self.pack_rewards.pack_into(buf, out["rewards_at"], *rewards)
        at = out["terminated_at"]
        buf[at : at + count] = bytes(terms)
        at = out["truncated_at"]
        buf[at : at + count] = bytes(truncs)
        self._store_infos(out, lens, finals)

    def _store_infos(self, out: dict[str, Any], lens: list[int] | None, finals: list[bool] | None) -> None:
        """The group's info lengths and final masks (None: all zero; see :meth:`_store_results`)."""
        buf = self.buf
        lo, hi = self.lo, self.hi
        count = hi - lo
        if lens is not None or not out["info_clean"]:
            out["info_len"][lo:hi] = self.no_info if lens is None else lens
            out["info_clean"] = lens is None
        if finals is not None or not out["final_clean"]:
            at = out["final_at"]
            buf[at : at + count] = self.no_finals if finals is None else bytes(finals)
            out["final_clean"] = finals is None

    def _reset(self, out: dict[str, Any]) -> None:
        import msgpack

        from ._info import encode_info

        L = self.L
        lo, hi = self.lo, self.hi
        olen = _U32.unpack_from(self.buf, self.layout.options)[0]
        options = None
        if olen:
            if olen > L.OPTIONS_BYTES:
                raise ValueError("reset options longer than the layout allows")
            start = self.layout.options + 4
            options = msgpack.unpackb(bytes(self.buf[start : start + olen]), raw=False)
        lens = [0] * (hi - lo)
        for j in range(hi - lo):
            i = lo + j
            if self.mask[i]:
                seed = int(self.seeds[i]) if self.has_seed[i] else None
                try:
                    restarted = self.any_fresh and self.fresh[j] is not None
                    if restarted:
                        self._take_fresh(j)
                    obs, info = self.envs[j].reset(seed=seed, options=options)
                    if restarted:
                        info = {**(info or {}), "rlmesh_restarted": True}
                    self.autoreset[j] = False
                    self.last_obs[j] = obs
                    self._write_obs(out["obs"], i, obs)
                    if info:
                        lens[j] = self._write_info(out, i, encode_info(info))
                except Exception as exc:
                    raise _LaneError(_record(exc, i)) from exc
            elif self.last_obs[j] is not None:
                self._write_obs(out["obs"], i, self.last_obs[j])
        out["info_len"][lo:hi] = lens
        out["final_mask"][lo:hi] = [False] * (hi - lo)
        out["terminated"][lo:hi] = [False] * (hi - lo)
        out["truncated"][lo:hi] = [False] * (hi - lo)
        out["rewards"][lo:hi] = [0.0] * (hi - lo)
        out["info_clean"] = not any(lens)
        out["final_clean"] = True

    def _take_fresh(self, j: int) -> tuple[Any, dict[str, Any]]:
        """Lane ``lo + j``'s restart episode, flagged for the client; the lane is reported once."""
        fresh = self.fresh[j]
        assert fresh is not None
        self.fresh[j] = None
        self.any_fresh = any(f is not None for f in self.fresh)
        obs, info = fresh
        return obs, {**info, "rlmesh_restarted": True}


class _LaneError(Exception):
    def __init__(self, record: bytes) -> None:
        super().__init__("lane error")
        self.record = record


def _qualname(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _record(exc: BaseException, lane: int) -> bytes:
    import msgpack

    tb = traceback.format_exc()[-16000:]
    return bytes(msgpack.packb([_qualname(exc), str(exc)[:16000], tb, lane]))


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _encode_frame(np: Any, frame: Any) -> Any:
    if frame is None or isinstance(frame, (str, bool, int, float)):
        return frame
    if isinstance(frame, (list, tuple)):
        return [_encode_frame(np, f) for f in frame]
    arr = np.ascontiguousarray(frame)
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "data": arr.tobytes()}


def main(argv: list[str]) -> int:
    """Run a worker on the control socket whose descriptor is ``argv[1]``."""
    from ._control import recv_msg, send_msg

    sock = socket.socket(fileno=int(argv[1]))
    try:
        config = recv_msg(sock, 60.0)
    except Exception:
        return 2
    _set_pdeathsig(int(config["parent"]))
    for entry in reversed(config.get("sys_path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        worker = Worker(sock, config)
    except Exception as exc:
        send_msg(sock, ["error", _qualname(exc), str(exc), traceback.format_exc()], 10.0)
        return 1
    send_msg(sock, ["ready", os.getpid()], 10.0)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
