"""A model's four predict corners: how each is called, how the missing ones derive, chunk replay.

A model defines some of four *corners*, a 2x2 lattice over a batch axis (one
observation, or a vector env's lanes fused into one call) and a chunk axis (one
action, or a chunk of future actions per call)::

    predict(observation[, context])                              -> one action
    predict_chunk(observation[, execution_horizon][, context])   -> chunk, leaves (H, ...)
    predict_batch(observations)                                  -> actions, leaves (N, ...)
    predict_chunk_batch(observations[, execution_horizon])       -> chunks, leaves (N, H, ...)

The missing corners derive *downward*, never up: **de-batch** runs a batched
corner on a batch of one lane and takes lane 0 (``predict_batch`` gives
``predict``, ``predict_chunk_batch`` gives ``predict_chunk``); **de-chunk** runs
a chunk corner at horizon 1 and takes the first action (``predict_chunk`` gives
``predict``, ``predict_chunk_batch`` gives ``predict_batch``). So
``predict_chunk_batch`` alone yields all four. Where ``predict`` could come from
either side, it comes from ``predict_batch``, so a single step never pays for a
chunk it would throw away.

What a corner receives is read from its signature, once:

* ``context`` (``{"episode_id", "episode_seed"}``) only when an unbatched corner
  declares a parameter named ``context`` (positional right after the
  observation, and after the horizon on a chunk corner, or keyword-only), or
  takes ``*args``. An unrelated extra parameter is never mistaken for it.
  Batched corners never get one: their lanes belong to different episodes.
* the execution horizon only when a chunk corner declares a second positional
  parameter (not named ``context``), a keyword-only ``execution_horizon``, or
  ``*args``. Most chunk models ignore it and return their native chunk.

Chunk axes: in a chunk, an array's (or :class:`~rlmesh.tensor.Tensor`'s)
leading axis, or a list's or tuple's items, are the frames; a dict carries the
chunk axis inside every leaf (``{"arm": (5, 2)}`` is five ``{"arm": (2,)}``);
a string, bytes or scalar is a chunk of one. In a batch, a list's items are
the lanes, while tuples and dicts are containers whose leaves carry the lane axis.

Unlike the published package, whose plain backend cannot index its tensors,
every backend here can de-chunk and fuse: a chunk-only ``rlmesh.Model`` works.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from ._bridge import IDENTITY, Bridge
from .tensor import Tensor

__all__ = [
    "CORNERS",
    "ChunkReplay",
    "Corners",
    "LaneReplay",
    "chunk_frames",
    "derive_corners",
    "first_frame",
    "lane",
    "lane_planner",
    "stack_lanes",
]

#: The four corners, from the least to the most general.
CORNERS = ("predict", "predict_chunk", "predict_batch", "predict_chunk_batch")

#: ``predict`` as the runtime calls it: ``(observation, context) -> action``.
Predict = Callable[[Any, Any], Any]
#: ``predict_chunk``: ``(observation, horizon, context) -> chunk``.
PredictChunk = Callable[[Any, int, Any], Any]
#: ``predict_batch``: ``(observations) -> actions``.
PredictBatch = Callable[[Any], Any]
#: ``predict_chunk_batch``: ``(observations, horizon) -> chunks``.
PredictChunkBatch = Callable[[Any, int], Any]

_Slot = Literal["positional", "keyword"] | None


@dataclasses.dataclass(frozen=True)
class Corners:
    """A model's corners, normalised to the runtime's calling conventions.

    ``predict`` always exists; the others are None when neither defined nor derivable.
    ``predict_takes_context`` / ``chunk_takes_context`` say whether the
    corner will read the context, so that callers build one only then.
    """

    predict: Predict
    predict_chunk: PredictChunk | None
    predict_batch: PredictBatch | None
    predict_chunk_batch: PredictChunkBatch | None
    predict_takes_context: bool
    chunk_takes_context: bool


# -- signatures ---------------------------------------------------------------------------


def _slots(fn: Callable[..., Any], *, chunk: bool) -> tuple[_Slot, _Slot]:
    """Where ``fn`` takes the horizon (chunk corners only) and the context, if at all."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None, None  # a builtin without a signature: the observation only
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return ("positional" if chunk else None), "positional"
    by_position = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in params if p.kind in by_position]
    keyword_only = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    rest = positional[1:]  # after the observation
    horizon: _Slot = None
    if chunk:
        if rest and rest[0].name != "context":
            horizon = "positional"
            rest = rest[1:]
        elif "execution_horizon" in keyword_only:
            horizon = "keyword"
    context: _Slot = None
    if rest and rest[0].name == "context":
        context = "positional"
    elif "context" in keyword_only:
        context = "keyword"
    return horizon, context


def _bind_predict(fn: Callable[..., Any]) -> tuple[Predict, bool]:
    _, context = _slots(fn, chunk=False)
    if context == "positional":
        return (lambda observation, ctx: fn(observation, ctx)), True
    if context == "keyword":
        return (lambda observation, ctx: fn(observation, context=ctx)), True
    return (lambda observation, ctx: fn(observation)), False


def _bind_chunk(fn: Callable[..., Any], *, batched: bool) -> tuple[PredictChunk, bool]:
    horizon_slot, context_slot = _slots(fn, chunk=True)
    if batched:
        context_slot = None  # lanes of a batch belong to different episodes

    def call(observation: Any, horizon: int, context: Any) -> Any:
        args: list[Any] = [observation]
        kwargs: dict[str, Any] = {}
        if horizon_slot == "positional":
            args.append(horizon)
        elif horizon_slot == "keyword":
            kwargs["execution_horizon"] = horizon
        if context_slot == "positional":
            args.append(context)
        elif context_slot == "keyword":
            kwargs["context"] = context
        return fn(*args, **kwargs)

    return call, context_slot is not None


# -- derivation ---------------------------------------------------------------------------


def derive_corners(
    bridge: Bridge,
    *,
    predict: Callable[..., Any] | None,
    predict_chunk: Callable[..., Any] | None,
    predict_batch: Callable[..., Any] | None,
    predict_chunk_batch: Callable[..., Any] | None,
) -> Corners:
    """Normalise the defined corners and derive the missing ones downward.

    Each corner argument is the user's callable (a bound method, or the
    wrapped function for ``predict``), or None.

    Args:
        bridge: the model's backend, used to stack a lone observation into a 1-lane batch.
        predict: the ``predict`` corner.
        predict_chunk: the ``predict_chunk`` corner.
        predict_batch: the ``predict_batch`` corner.
        predict_chunk_batch: the ``predict_chunk_batch`` corner.

    Raises:
        TypeError: no corner at all.
    """
    if predict is None and predict_chunk is None and predict_batch is None and predict_chunk_batch is None:
        raise TypeError(
            "a model needs at least one of predict, predict_chunk, predict_batch, predict_chunk_batch"
        )
    p: Predict | None = None
    p_context = pc_context = False
    pc: PredictChunk | None = None
    pb: PredictBatch | None = predict_batch
    pcb: PredictChunkBatch | None = None
    if predict is not None:
        p, p_context = _bind_predict(predict)
    if predict_chunk is not None:
        pc, pc_context = _bind_chunk(predict_chunk, batched=False)
    if predict_chunk_batch is not None:
        bound, _ = _bind_chunk(predict_chunk_batch, batched=True)
        pcb = _drop_context(bound)
        if pc is None:
            pc = _debatch_chunk(bridge, pcb)
        if pb is None:
            pb = _dechunk_batch(pcb)
    if p is None:
        if pb is not None:
            p = _debatch(bridge, pb)
        else:
            assert pc is not None  # some corner exists, and only these two derive predict
            p = _dechunk(pc)
            p_context = pc_context  # the derived predict hands its context on
    return Corners(p, pc, pb, pcb, p_context, pc_context)


def _drop_context(fn: PredictChunk) -> PredictChunkBatch:
    return lambda observations, horizon: fn(observations, horizon, None)


def _debatch(bridge: Bridge, batch: PredictBatch) -> Predict:
    def predict(observation: Any, context: Any) -> Any:
        return lane(batch(stack_lanes([observation], bridge)), 0)

    return predict


def _debatch_chunk(bridge: Bridge, batch: PredictChunkBatch) -> PredictChunk:
    def predict_chunk(observation: Any, horizon: int, context: Any) -> Any:
        return lane(batch(stack_lanes([observation], bridge), horizon), 0)

    return predict_chunk


def _dechunk(chunk: PredictChunk) -> Predict:
    def predict(observation: Any, context: Any) -> Any:
        return first_frame(chunk(observation, 1, context))

    return predict


def _dechunk_batch(chunk: PredictChunkBatch) -> PredictBatch:
    def predict_batch(observations: Any) -> Any:
        return _first_frame_per_lane(chunk(observations, 1))

    return predict_batch


# -- lanes ------------------------------------------------------------------------------


def lane(value: Any, i: int) -> Any:
    """Lane ``i`` of a batched value: the leading axis of every leaf; a list's item ``i``."""
    kind = type(value)
    if kind is dict:
        return {k: lane(v, i) for k, v in value.items()}
    if kind is tuple:
        return tuple(lane(v, i) for v in value)
    if kind is list:
        return value[i]
    if isinstance(value, Tensor):
        return _row(value, i)
    return value[i]


def _row(tensor: Tensor, i: int) -> Tensor:
    """Row ``i`` of a tensor's leading axis, as a new tensor (a copy)."""
    count = tensor.shape[0]
    if not -count <= i < count:
        raise IndexError(f"index {i} is out of range for a leading axis of {count}")
    i %= count
    size = tensor.nbytes // count
    return Tensor(tensor._view[i * size : (i + 1) * size], tuple(tensor.shape[1:]), tensor.dtype)


def stack_lanes(lanes: list[Any], bridge: Bridge) -> Any:
    """Stack per-lane values into one batch (every leaf gains a leading lane axis)."""
    first = lanes[0]
    if isinstance(first, dict):
        return {k: stack_lanes([item[k] for item in lanes], bridge) for k in first}
    if isinstance(first, tuple):
        return tuple(stack_lanes([item[i] for item in lanes], bridge) for i in range(len(first)))
    if isinstance(first, Tensor):
        data = b"".join(t.tobytes() for t in lanes)
        return Tensor(data, (len(lanes), *first.shape), first.dtype)
    if bridge.name == "jax":
        import jax.numpy as jnp

        return jnp.stack(lanes)
    if bridge.name == "numpy" or type(first).__module__ == "numpy":
        import numpy as np

        return np.stack(lanes)
    return list(lanes)


# -- chunks ------------------------------------------------------------------------------


def _frames(chunk: Any) -> list[Any]:
    """The actions of one chunk, in order (see the module docstring for the axes)."""
    if isinstance(chunk, (str, bytes, bytearray)):
        return [chunk]
    if isinstance(chunk, Mapping):
        fields = [(key, _frames(value)) for key, value in chunk.items()]
        lengths = {len(frames) for _, frames in fields}
        if len(lengths) > 1:
            raise ValueError(f"the fields of an action chunk disagree on its length: {sorted(lengths)}")
        count = lengths.pop() if lengths else 0
        return [{key: frames[i] for key, frames in fields} for i in range(count)]
    if isinstance(chunk, (list, tuple)):
        return list(chunk)
    if isinstance(chunk, Tensor):
        return [_row(chunk, i) for i in range(chunk.shape[0])] if chunk.ndim else [chunk]
    if getattr(chunk, "ndim", 0) >= 1:
        return [chunk[i] for i in range(chunk.shape[0])]
    return [chunk]


def chunk_frames(chunk: Any, horizon: int) -> list[Any]:
    """The first ``horizon`` actions of a chunk (all of them when it is shorter).

    Raises:
        ValueError: the chunk is empty, or its dict fields differ in length.
    """
    frames = _frames(chunk)[:horizon]
    if not frames:
        raise ValueError("the model returned an empty action chunk; return at least one action")
    return frames


def first_frame(chunk: Any) -> Any:
    """The first action of a chunk.

    Raises:
        ValueError: the chunk is empty.
    """
    if isinstance(chunk, Mapping):
        return {key: first_frame(value) for key, value in chunk.items()}
    return chunk_frames(chunk, 1)[0]


def _first_frame_per_lane(chunks: Any) -> Any:
    """Frame 0 of every lane of a batched chunk: leaves ``(N, H, ...)`` become ``(N, ...)``."""
    if isinstance(chunks, Mapping):
        return {key: _first_frame_per_lane(value) for key, value in chunks.items()}
    if isinstance(chunks, tuple):
        return tuple(_first_frame_per_lane(value) for value in chunks)
    if isinstance(chunks, list):
        return [first_frame(item) for item in chunks]
    if isinstance(chunks, Tensor):
        if chunks.ndim < 2:
            return chunks
        return stack_lanes([_row(_row(chunks, i), 0) for i in range(chunks.shape[0])], IDENTITY)
    if getattr(chunks, "ndim", 0) >= 2:
        return chunks[:, 0]
    return chunks


# -- replay -------------------------------------------------------------------------------


class ChunkReplay:
    """Plays a predicted chunk one action per step, and predicts again when it runs out.

    At most ``horizon`` actions of each chunk are played (a model may return a
    longer native chunk and re-plan sooner); a shorter chunk just re-plans sooner.
    :meth:`clear` drops what is left, at an episode boundary.
    """

    __slots__ = ("horizon", "_queue")

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self._queue: deque[Any] = deque()

    @property
    def pending(self) -> int:
        """Actions left before the next prediction."""
        return len(self._queue)

    def clear(self) -> None:
        """Drop the actions not played yet."""
        self._queue.clear()

    def next(self, plan: Callable[[], Any]) -> Any:
        """The next action: a queued one, or the first of the chunk ``plan()`` predicts.

        Raises:
            ValueError: ``plan()`` returned an empty chunk.
        """
        if self._queue:
            return self._queue.popleft()
        frames = chunk_frames(plan(), self.horizon)
        self._queue.extend(frames[1:])
        return frames[0]


def lane_planner(
    corners: Corners, num_envs: int, horizon: int, context: Callable[[], Any]
) -> Callable[[Any], list[list[Any]]]:
    """The batched planning call of a :class:`LaneReplay`: observations in, each lane's frames out.

    It calls ``predict_chunk_batch`` when the model has one. Otherwise the
    model's ``predict_chunk`` gets the whole batch as one observation (as
    ``predict`` does when a model has no batched corner), and every frame of
    its chunk is one batched action. ``context()`` builds the batched context
    when that corner reads one.
    """
    batched = corners.predict_chunk_batch
    if batched is not None:

        def plan_batched(observations: Any) -> list[list[Any]]:
            chunks = batched(observations, horizon)
            return [chunk_frames(lane(chunks, i), horizon) for i in range(num_envs)]

        return plan_batched
    single = corners.predict_chunk
    if single is None:
        raise TypeError("chunk replay needs predict_chunk or predict_chunk_batch")
    wants_context = corners.chunk_takes_context

    def plan_whole(observations: Any) -> list[list[Any]]:
        chunk = single(observations, horizon, context() if wants_context else None)
        frames = chunk_frames(chunk, horizon)
        return [[lane(frame, i) for frame in frames] for i in range(num_envs)]

    return plan_whole


class LaneReplay:
    """Per-lane chunk replay for a vector env, planned by one batched call.

    Every step, if some lane has no action queued, ``plan(observations)``
    predicts for the whole batch and returns each lane's frames; only the lanes
    that ran out take theirs, the others keep playing their own chunk. An
    *idle* lane (one whose action the env ignores this step: the autoreset
    step of NextStep) repeats its last action instead of asking for a plan, so
    no chunk is ever planned from the final observation of an ended episode.
    """

    def __init__(self, num_envs: int, plan: Callable[[Any], list[list[Any]]]) -> None:
        self._plan = plan
        self._queues: list[deque[Any]] = [deque() for _ in range(num_envs)]
        self._last: list[Any] = [None] * num_envs
        self._has_last = [False] * num_envs

    def clear(self, i: int) -> None:
        """Drop lane ``i``'s queued actions (its episode ended)."""
        self._queues[i].clear()

    def clear_all(self) -> None:
        """Drop every lane's queued actions (every lane was reset)."""
        for queue in self._queues:
            queue.clear()

    def actions(self, observations: Any, idle: Sequence[bool]) -> list[Any]:
        """One action per lane for this step.

        Raises:
            ValueError: the model returned an empty chunk.
        """
        queues = self._queues
        needy = [i for i, queue in enumerate(queues) if not queue and not (idle[i] and self._has_last[i])]
        if needy:
            planned = self._plan(observations)
            for i in needy:
                queues[i].extend(planned[i])
        actions: list[Any] = []
        for i, queue in enumerate(queues):
            action = queue.popleft() if queue else self._last[i]
            self._last[i] = action
            self._has_last[i] = True
            actions.append(action)
        return actions
