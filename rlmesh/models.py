"""The model runtime: ``Model``, ``run``, ``session`` and their results.

A *model* turns observations into actions: ``rlmesh.Model(predict)`` wraps a
callable; a subclass overrides ``predict`` (and optionally ``predict_batch``,
``load``, ``reset`` and ``close``). ``rlmesh.numpy.Model`` and
``rlmesh.jax.Model`` hand ``predict`` NumPy or JAX observations; the plain
``rlmesh.Model`` hands it :class:`rlmesh.Tensor` leaves.

``run`` drives a model against an env for a number of episodes and returns a
:class:`RunResult`. The env may be an address (``"unix:///tmp/env.sock"``), a
connected client (driven as it is), or a local env, env factory or Gymnasium id
(served in this process for the run, so the model sees exactly what a remote
client would). ``session`` gives the same loop to drive by hand.

Counting rules (those of the published package):

* ``max_episodes`` set: run exactly that many; it overrides the length of
  ``seeds``, and episodes past the last seed run unseeded;
* only ``seeds``: one episode per seed (``seeds=[]``: an empty result);
* neither: a single episode.

Each episode is capped at 100,000 steps (and at ``max_episode_steps`` /
``max_episode_seconds`` when given); an episode cut by a cap is marked
``truncated``. Success is read from the final step's ``info["is_success"]``,
else ``info["success"]``, else ``terminated``; :attr:`RunResult.success_rate`
warns once when no episode reported a signal of its own.

Vector endpoints run every lane at once, fusing lanes into one
``predict_batch`` call when the model defines it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import IO, Any, Generic, TypeVar

from ._bridge import IDENTITY, Bridge
from .errors import ClosedError, RLMeshError

__all__ = [
    "MAX_EPISODE_STEPS",
    "RANDOM_SAMPLE",
    "EpisodeResult",
    "Model",
    "ModelBase",
    "RunHooks",
    "RunResult",
    "Session",
    "StepEvent",
    "run",
    "session",
]

#: Every episode stops here, marked truncated, whatever the env does.
MAX_EPISODE_STEPS = 100_000

ObsT = TypeVar("ObsT")
ActT = TypeVar("ActT")


class _RandomSample:
    """The policy that samples the env's action space each step."""

    def __repr__(self) -> str:
        return "RANDOM_SAMPLE"


#: Pass as the model to ``rlmesh.run`` / ``rlmesh.session`` to act at random.
RANDOM_SAMPLE = _RandomSample()


# -- results -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    """One finished episode.

    Attributes:
        index: the episode's position in the run (0-based).
        seed: the seed it was reset with, or None.
        steps: steps taken.
        reward: the sum of rewards.
        terminated: the env ended it.
        truncated: a time limit ended it (the env's, or the runtime's caps).
        success: the env's own success signal from the last step's info
            (``is_success``, else ``success``), or None if it gave none.
        duration_s: wall time of the episode.
        predict_ms: time spent in the model, in milliseconds.
        step_ms: time spent in env steps (including the transport), in milliseconds.
    """

    index: int
    seed: int | None
    steps: int
    reward: float
    terminated: bool
    truncated: bool
    success: bool | None = None
    duration_s: float = 0.0
    predict_ms: float = 0.0
    step_ms: float = 0.0

    @property
    def succeeded(self) -> bool:
        """``success`` when the env reported one, else ``terminated``."""
        return self.terminated if self.success is None else self.success


@dataclasses.dataclass(frozen=True)
class RunResult:
    """The episodes of a run, and their aggregates."""

    episodes: tuple[EpisodeResult, ...] = ()

    @property
    def num_episodes(self) -> int:
        """How many episodes finished."""
        return len(self.episodes)

    @property
    def total_steps(self) -> int:
        """Steps over all episodes."""
        return sum(e.steps for e in self.episodes)

    @property
    def mean_reward(self) -> float:
        """The mean episode return (0.0 without episodes)."""
        if not self.episodes:
            return 0.0
        return sum(e.reward for e in self.episodes) / len(self.episodes)

    @property
    def success_rate(self) -> float:
        """The fraction of episodes that succeeded (0.0 without episodes).

        Warns (``UserWarning``) when no episode reported a success signal of
        its own, so the rate fell back to ``terminated``.
        """
        if not self.episodes:
            return 0.0
        if all(e.success is None for e in self.episodes):
            warnings.warn(
                "no episode reported a task-outcome signal (info['is_success'] or info['success']); "
                "success_rate fell back to `terminated`",
                UserWarning,
                stacklevel=2,
            )
        return sum(e.succeeded for e in self.episodes) / len(self.episodes)

    def __repr__(self) -> str:
        return (
            f"RunResult(episodes={self.num_episodes}, mean_reward={self.mean_reward:.3f}, "
            f"total_steps={self.total_steps})"
        )


@dataclasses.dataclass(frozen=True)
class StepEvent:
    """What :meth:`RunHooks.on_step` receives for every step."""

    episode: int
    seed: int | None
    step: int
    observation: Any
    action: Any
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    predict_ms: float
    step_ms: float


class RunHooks:
    """Callbacks of a run; subclass and override what you need.

    An exception in a hook aborts the run. ``on_run_end`` always runs once,
    with the episodes finished so far; if the run itself failed, that
    original exception wins over one raised by ``on_run_end``.
    """

    def on_run_start(self, session: Session) -> None:
        """The run is about to start its first episode."""

    def on_episode_start(self, *, episode: int, seed: int | None) -> None:
        """An episode is about to reset."""

    def on_step(self, event: StepEvent) -> None:
        """A step finished."""

    def on_episode_end(self, result: EpisodeResult) -> None:
        """An episode finished."""

    def on_run_end(self, result: RunResult) -> None:
        """The run finished (or failed; ``result`` then holds what finished)."""


# -- models --------------------------------------------------------------------------


def _positional_arity(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    count = 0
    for param in params:
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            return 2
        if param.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


class ModelBase(Generic[ObsT, ActT]):
    """A policy: observations in, actions out.

    Args:
        source: a callable ``predict(observation)`` (or
            ``predict(observation, context)``, where context holds
            ``episode_id`` and ``episode_seed``). Omit it in a subclass that
            overrides :meth:`predict` or :meth:`predict_batch`.
        spec: optional metadata about the model (kept as ``self.spec``).
        on_episode_end: called with no arguments after every episode.
        on_close: called with no arguments once, when a session closes.

    Subclass hooks: :meth:`load` (once, before the first episode),
    :meth:`reset` (before every episode) and :meth:`close` (when a session
    closes).

    Raises:
        TypeError: no callable source and no ``predict``/``predict_batch`` override.
    """

    _bridge: Bridge = IDENTITY
    #: The backend's clients, used when the env is given as an address.
    _client_classes: tuple[type, type] | None = None
    #: Let ``run`` fuse the lanes of a vector env into one ``predict_batch`` call.
    allow_fusion = True
    spec: Any = None

    def __init__(
        self,
        source: Callable[..., Any] | None = None,
        *,
        spec: Any = None,
        on_episode_end: Callable[[], Any] | None = None,
        on_close: Callable[[], Any] | None = None,
    ) -> None:
        cls = type(self)
        overrides = cls.predict is not ModelBase.predict or cls.predict_batch is not ModelBase.predict_batch
        if source is None and not overrides:
            raise TypeError(
                f"{cls.__name__} needs a predict callable, or a subclass that overrides "
                "predict() or predict_batch()"
            )
        if source is not None and not callable(source):
            raise TypeError(f"the model source must be callable, got {type(source).__name__}")
        self._source = source
        self._source_arity = _positional_arity(source) if source is not None else 1
        if spec is not None:
            self.spec = spec
        self._on_episode_end = on_episode_end
        self._on_close = on_close
        self._loaded = False

    # -- what subclasses override ---------------------------------------------------------

    def predict(self, observation: ObsT, context: dict[str, Any] | None = None) -> ActT:
        """The action for one observation.

        Raises:
            NotImplementedError: no source callable was given and only
                ``predict_batch`` is overridden.
        """
        source = self._source
        if source is None:
            if type(self).predict_batch is not ModelBase.predict_batch:
                action: ActT = self._predict_via_batch(observation)
                return action
            raise NotImplementedError("predict() is not implemented")
        if self._source_arity >= 2:
            return source(observation, context)  # type: ignore[no-any-return]
        return source(observation)  # type: ignore[no-any-return]

    def predict_batch(self, observations: Any) -> Any:
        """Actions for a batch of observations (leading axis: the lanes).

        Override it to fuse the lanes of a vector env into one call; the base
        class does not define it, and ``run`` then calls :meth:`predict` per lane.
        """
        raise NotImplementedError

    def load(self) -> None:
        """Load weights or other state; called once before the first episode."""

    def reset(self) -> None:
        """Called before every episode."""

    def close(self) -> None:
        """Release what the model holds; called once when a session closes."""

    # -- helpers ---------------------------------------------------------------------------

    def _has_batch(self) -> bool:
        return self.allow_fusion and type(self).predict_batch is not ModelBase.predict_batch

    def _predict_via_batch(self, observation: Any) -> Any:
        batch = _stack_lanes([observation], self._bridge)
        return _lane(self.predict_batch(batch), 0)

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            self.load()

    def _episode_ended(self) -> None:
        if self._on_episode_end is not None:
            self._on_episode_end()

    def _closed(self) -> None:
        try:
            self.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        env: Any,
        *,
        seeds: Sequence[int] | None = None,
        max_episodes: int | None = None,
        max_episode_steps: int | None = None,
        max_episode_seconds: float | None = None,
        hooks: RunHooks | None = None,
        close_env: bool = False,
        progress: bool | None = None,
    ) -> RunResult:
        """Run the model against ``env`` and return the finished episodes.

        Args:
            env: an address, a connected client, a local env object, an env
                factory, or a Gymnasium id.
            seeds: per-episode seeds (see the module's counting rules).
            max_episodes: how many episodes to run.
            max_episode_steps: cut every episode after this many steps (truncated).
            max_episode_seconds: cut every episode after this much time (truncated).
            hooks: callbacks; see :class:`RunHooks`.
            close_env: afterwards, ask an address's server to shut down, call
                a client's ``shutdown()``, or close a local env.
            progress: show a progress line on stderr (default: when stderr is
                a terminal, for runs longer than two seconds).

        Returns:
            The :class:`RunResult`.

        Raises:
            ValueError: bad counts or caps. Any error of the env or the model;
            it carries the episodes finished so far as ``partial_result``.
        """
        return run(
            self,
            env,
            seeds=seeds,
            max_episodes=max_episodes,
            max_episode_steps=max_episode_steps,
            max_episode_seconds=max_episode_seconds,
            hooks=hooks,
            close_env=close_env,
            progress=progress,
        )

    def session(self, env: Any, *, close_env: bool = False) -> Session:
        """A :class:`Session` to drive this model against one env by hand.

        Raises:
            ValueError: ``env`` serves a vector env (use :meth:`run`).
        """
        return Session._create(self, env, close_env=close_env, allow_vector=False)


class Model(ModelBase[Any, Any]):
    """A model whose ``predict`` receives :class:`rlmesh.Tensor` leaves.

    See :class:`ModelBase`.

    Example:
        >>> rlmesh.Model(lambda observation: 0).run("unix:///tmp/env.sock", seeds=[0])  # doctest: +SKIP
    """


# -- targets -------------------------------------------------------------------------------


def _looks_like_address(text: str) -> bool:
    if "://" in text or text.startswith("/"):
        return True
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit())


class _Target:
    """An env opened for a run or session: a client, and what to tear down after."""

    def __init__(self, model: ModelBase[Any, Any], env: Any, close_env: bool) -> None:
        from . import client as _client
        from .server import EnvServer

        self.close_env = close_env
        self.server: Any = None
        self.tmpdir: Any = None
        self.owns_client = True
        self.kind = "local"
        single, vector = model._client_classes or (_client.RemoteEnv, _client.RemoteVectorEnv)
        if isinstance(env, _client.RemoteEnvBase):
            self.client: Any = env
            self.owns_client = False
            self.kind = "handle"
            return
        if isinstance(env, str) and _looks_like_address(env):
            self.kind = "address"
            self.client = _client.dial(env, single=single, vector=vector)
            return
        # A local env, factory or Gymnasium id: serve it in this process for the run.
        self.tmpdir = tempfile.TemporaryDirectory(prefix="rlmesh-run-")
        try:
            self.server = EnvServer(
                env, f"unix://{self.tmpdir.name}/env.sock", close_env_on_shutdown=close_env
            ).start()
            self.client = _client.dial(self.server.address, single=single, vector=vector)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Tear down what was opened for the run."""
        try:
            if self.close_env and self.kind in ("address", "handle"):
                try:
                    self.client.shutdown("owner shutdown")
                except RLMeshError:
                    pass  # the server may be gone already
            if self.owns_client and getattr(self, "client", None) is not None:
                self.client.close()
        finally:
            if self.server is not None:
                self.server.shutdown()
                self.server = None
            if self.tmpdir is not None:
                self.tmpdir.cleanup()
                self.tmpdir = None


# -- lanes ------------------------------------------------------------------------------------


def _lane(value: Any, i: int) -> Any:
    """Lane ``i`` of a batched value (leading axis)."""
    from .tensor import Tensor

    kind = type(value)
    if kind is dict:
        return {k: _lane(v, i) for k, v in value.items()}
    if kind is tuple:
        return tuple(_lane(v, i) for v in value)
    if kind is list:
        return value[i]
    if isinstance(value, Tensor):
        row = value.nbytes // value.shape[0] if value.shape[0] else 0
        return Tensor(value._view[i * row : (i + 1) * row], value.shape[1:], value.dtype)
    return value[i]


def _stack_lanes(lanes: list[Any], bridge: Bridge) -> Any:
    """Stack per-lane values into a batch for ``predict_batch``."""
    from .tensor import Tensor

    first = lanes[0]
    if isinstance(first, dict):
        return {k: _stack_lanes([lane[k] for lane in lanes], bridge) for k in first}
    if isinstance(first, tuple):
        return tuple(_stack_lanes([lane[i] for lane in lanes], bridge) for i in range(len(first)))
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


def _lane_count(value: Any) -> int:
    if isinstance(value, dict):
        return _lane_count(next(iter(value.values())))
    if isinstance(value, tuple):
        return _lane_count(value[0])
    shape = getattr(value, "shape", None)
    return int(shape[0]) if shape else len(value)


def _scalar(value: Any, i: int | None = None) -> Any:
    """A Python scalar from a per-lane array or list element."""
    item = value if i is None else (value[i] if not hasattr(value, "tolist") else value.tolist()[i])
    return item.item() if hasattr(item, "item") else item


def _success(info: Any, lane: int | None = None) -> bool | None:
    if not isinstance(info, dict):
        return None
    for key in ("is_success", "success"):
        if key in info:
            value = info[key]
            if lane is not None:
                mask = info.get(f"_{key}")
                if mask is not None and not _scalar(mask, lane):
                    continue
                if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
                    value = _scalar(value, lane)
            if value is None:
                continue
            return bool(value)
    return None


# -- progress ---------------------------------------------------------------------------------


class _Progress:
    """A one-line progress display on a terminal, after a couple of seconds."""

    def __init__(self, stream: IO[str] | None, enabled: bool | None, total: int | None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.total = total
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def update(self, episodes: int, steps: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and (now - self.start < 2.0 or now - self.last < 0.2):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        total = f"/{self.total}" if self.total is not None else ""
        self.stream.write(
            f"\rrlmesh: {episodes}{total} episodes, {steps:,} steps, {steps / elapsed:,.0f} steps/s "
        )
        self.stream.flush()
        self.shown = True

    def finish(self, episodes: int, steps: int) -> None:
        if self.shown:
            self.update(episodes, steps, force=True)
            self.stream.write("\n")
            self.stream.flush()


# -- sessions ----------------------------------------------------------------------------------


def _plan(seeds: Sequence[int] | None, max_episodes: int | None) -> list[int | None]:
    if max_episodes is not None:
        if isinstance(max_episodes, bool) or not isinstance(max_episodes, int) or max_episodes < 0:
            raise ValueError(f"max_episodes must be an int >= 0, got {max_episodes!r}")
    if seeds is not None:
        seeds = list(seeds)
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"seeds must be non-negative ints, got {seed!r}")
    if max_episodes is not None:
        given = seeds or []
        return [given[i] if i < len(given) else None for i in range(max_episodes)]
    if seeds is not None:
        return list(seeds)
    return [None]


def _check_caps(max_episode_steps: int | None, max_episode_seconds: float | None) -> None:
    if max_episode_steps is not None and (
        isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1
    ):
        raise ValueError(f"max_episode_steps must be an int >= 1, got {max_episode_steps!r}")
    if max_episode_seconds is not None and not (
        isinstance(max_episode_seconds, (int, float))
        and max_episode_seconds > 0
        and math.isfinite(max_episode_seconds)
    ):
        raise ValueError(f"max_episode_seconds must be a finite number > 0, got {max_episode_seconds!r}")


class _Episode:
    """Running totals of the episode in progress on one lane."""

    __slots__ = ("index", "seed", "steps", "reward", "start", "predict_s", "step_s", "episode_id")

    def __init__(self, index: int, seed: int | None, episode_id: str | None = None) -> None:
        self.index = index
        self.seed = seed
        self.steps = 0
        self.reward = 0.0
        self.start = time.monotonic()
        self.predict_s = 0.0
        self.step_s = 0.0
        self.episode_id = episode_id

    def result(self, terminated: bool, truncated: bool, success: bool | None) -> EpisodeResult:
        return EpisodeResult(
            index=self.index,
            seed=self.seed,
            steps=self.steps,
            reward=self.reward,
            terminated=terminated,
            truncated=truncated,
            success=success,
            duration_s=time.monotonic() - self.start,
            predict_ms=self.predict_s * 1e3,
            step_ms=self.step_s * 1e3,
        )


class Session:
    """A model connected to one env, driven by hand or by :meth:`run`.

    Lifetime:
        Made by :func:`rlmesh.session` or :meth:`Model.session`; it connects
        on creation. :meth:`close` ends the episode in progress, calls the
        model's ``close`` and ``on_close`` once, and releases what the session
        opened (a client it dialed, an env it served). It is idempotent; the
        context manager calls it. After close every method raises
        :class:`ClosedError` (a RuntimeError).
    """

    _closed: bool
    _model: ModelBase[Any, Any]
    _target: _Target
    _client: Any
    _vector: bool
    _episode: _Episode | None
    _last_done: bool
    _episodes_begun: int
    _random: bool

    def __init__(self) -> None:
        raise TypeError("create sessions with rlmesh.session(model, env) or Model.session(env)")

    @classmethod
    def _create(cls, model: Any, env: Any, *, close_env: bool, allow_vector: bool) -> Session:
        self = cls.__new__(cls)
        self._closed = False
        self._model = _as_model(model)
        self._target = _Target(self._model, env, close_env)
        self._client = self._target.client
        num_envs = self._client.num_envs
        if num_envs > 1 and not allow_vector:
            self._target.close()
            raise ValueError(
                f"session() drives one env, but this endpoint serves num_envs={num_envs}; "
                "use Model.run() for vector envs"
            )
        self._vector = num_envs > 1
        self._episode = None
        self._last_done = True
        self._episodes_begun = 0
        self._random = self._model._source is _RANDOM_PREDICT
        return self

    # -- properties ----------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The client driving the env."""
        self._check()
        return self._client

    @property
    def model(self) -> ModelBase[Any, Any]:
        """The model."""
        return self._model

    @property
    def done(self) -> bool:
        """True when no episode is in progress (before the first reset, after an episode ended)."""
        self._check()
        return self._last_done

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._closed

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("session is closed")

    # -- hand-driven primitives ----------------------------------------------------------------

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Start an episode (ending the one in progress); returns ``(observation, info)``.

        Raises:
            ClosedError: the session is closed. Errors of the env.
        """
        self._check()
        self._end_episode_early()
        self._model._ensure_loaded()
        self._model.reset()
        obs, info = self._client.reset(seed=seed)
        ids = info.get("episode_ids") or [None]
        self._episode = _Episode(self._episodes_begun, seed, ids[0] if isinstance(ids, list) else None)
        self._episodes_begun += 1
        self._last_done = False
        return obs, info

    def predict(self, observation: Any) -> Any:
        """The model's action for ``observation`` (the action space's sample for RANDOM_SAMPLE).

        Raises:
            ClosedError: the session is closed.
        """
        self._check()
        if self._random:
            return self._client.action_space.sample()
        episode = self._episode
        context = {
            "episode_id": episode.episode_id if episode else None,
            "episode_seed": episode.seed if episode else None,
        }
        return self._model.predict(observation, context)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Advance one step; returns Gymnasium's five values.

        Raises:
            ClosedError: the session is closed. Errors of the env.
        """
        self._check()
        obs, reward, terminated, truncated, info = self._client.step(action)
        episode = self._episode
        if episode is not None:
            episode.steps += 1
            episode.reward += float(reward)
        if terminated or truncated:
            self._last_done = True
            if episode is not None:
                self._episode = None
                self._model._episode_ended()
        return obs, reward, terminated, truncated, info

    def _end_episode_early(self) -> None:
        if self._episode is not None:
            self._episode = None
            self._model._episode_ended()

    # -- the loop ---------------------------------------------------------------------------------

    def run(
        self,
        *,
        seeds: Sequence[int] | None = None,
        max_episodes: int | None = None,
        max_episode_steps: int | None = None,
        max_episode_seconds: float | None = None,
        hooks: RunHooks | None = None,
        progress: bool | None = None,
    ) -> RunResult:
        """Run episodes (see :meth:`ModelBase.run` for the arguments); the session stays open.

        Raises:
            ValueError: bad counts or caps. Errors of the env or model, with
            the episodes finished so far as ``partial_result``.
        """
        self._check()
        plan = _plan(seeds, max_episodes)
        _check_caps(max_episode_steps, max_episode_seconds)
        hooks = hooks if hooks is not None else RunHooks()
        results: list[EpisodeResult] = []
        display = _Progress(None, progress, len(plan))
        failure: BaseException | None = None
        try:
            hooks.on_run_start(self)
            if plan:
                if self._vector:
                    if max_episode_steps is not None or max_episode_seconds is not None:
                        raise ValueError(
                            "max_episode_steps and max_episode_seconds need to reset single lanes, which "
                            "vector endpoints cannot do; set the env's own time limit instead"
                        )
                    self._run_vector(plan, hooks, results, display)
                else:
                    for index, seed in enumerate(plan):
                        results.append(
                            self._run_episode(
                                index, seed, hooks, max_episode_steps, max_episode_seconds, display, results
                            )
                        )
        except BaseException as exc:
            failure = exc
            partial = RunResult(tuple(results))
            try:
                exc.partial_result = partial  # type: ignore[attr-defined]
                if hasattr(exc, "add_note"):
                    exc.add_note(
                        f"rlmesh: {partial.num_episodes} episode(s) had finished; see .partial_result"
                    )
            except (AttributeError, TypeError):
                pass
            raise
        finally:
            display.finish(len(results), sum(r.steps for r in results))
            final = RunResult(tuple(results))
            try:
                hooks.on_run_end(final)
            except BaseException:
                if failure is None:
                    raise
        return final

    def _act(self, obs: Any, episode: _Episode) -> Any:
        if self._random:
            return self._client.action_space.sample()
        return self._model.predict(obs, {"episode_id": episode.episode_id, "episode_seed": episode.seed})

    def _run_episode(
        self,
        index: int,
        seed: int | None,
        hooks: RunHooks,
        max_steps: int | None,
        max_seconds: float | None,
        display: _Progress,
        results: list[EpisodeResult],
    ) -> EpisodeResult:
        hooks.on_episode_start(episode=index, seed=seed)
        self._end_episode_early()
        self._model._ensure_loaded()
        self._model.reset()
        obs, info = self._client.reset(seed=seed)
        ids = info.get("episode_ids")
        episode = _Episode(index, seed, ids[0] if isinstance(ids, list) and ids else None)
        self._episode = episode
        self._last_done = False
        cap = min(max_steps or MAX_EPISODE_STEPS, MAX_EPISODE_STEPS)
        deadline = None if max_seconds is None else episode.start + max_seconds
        client_step = self._client.step
        wants_steps = type(hooks).on_step is not RunHooks.on_step
        done_steps = sum(r.steps for r in results)
        terminated = truncated = False
        while True:
            t0 = time.perf_counter()
            action = self._act(obs, episode)
            t1 = time.perf_counter()
            obs, reward, terminated, truncated, info = client_step(action)
            t2 = time.perf_counter()
            episode.predict_s += t1 - t0
            episode.step_s += t2 - t1
            episode.steps += 1
            episode.reward += reward
            if not (terminated or truncated) and (
                episode.steps >= cap or (deadline is not None and time.monotonic() >= deadline)
            ):
                truncated = True  # cut by the runtime's caps
            if wants_steps:
                hooks.on_step(
                    StepEvent(
                        episode=index,
                        seed=seed,
                        step=episode.steps,
                        observation=obs,
                        action=action,
                        reward=reward,
                        terminated=terminated,
                        truncated=truncated,
                        info=info,
                        predict_ms=(t1 - t0) * 1e3,
                        step_ms=(t2 - t1) * 1e3,
                    )
                )
            display.update(len(results), done_steps + episode.steps)
            if terminated or truncated:
                break
        self._episode = None
        self._last_done = True
        result = episode.result(terminated, truncated, _success(info))
        self._model._episode_ended()
        hooks.on_episode_end(result)
        return result

    def _run_vector(
        self, plan: list[int | None], hooks: RunHooks, results: list[EpisodeResult], display: _Progress
    ) -> None:
        client = self._client
        model = self._model
        n = client.num_envs
        seeds = [s for s in plan[:n]]
        if any(s is not None for s in plan[n:]):
            raise ValueError(
                f"a vector env of {n} lanes can seed only the first episode of each lane; "
                f"pass at most {n} seeds (episodes past them run unseeded)"
            )
        mode = client.autoreset_mode
        target = len(plan)
        model._ensure_loaded()
        model.reset()
        reset_seed: Any = None
        if any(s is not None for s in seeds):
            if not all(s is not None for s in seeds) or len(seeds) < n:
                raise ValueError(f"seed all {n} lanes of a vector env, or none")
            reset_seed = seeds
        obs, info = client.reset(seed=reset_seed)
        lanes: list[_Episode | None] = []
        next_index = 0
        for lane in range(n):
            if next_index < target:
                hooks.on_episode_start(episode=next_index, seed=seeds[lane] if lane < len(seeds) else None)
                lanes.append(_Episode(next_index, seeds[lane] if lane < len(seeds) else None))
                next_index += 1
            else:
                lanes.append(None)
        pending = [False] * n  # NextStep: this lane's next step is its autoreset step
        fused = model._has_batch() and not self._random
        while len(results) < target:
            t0 = time.perf_counter()
            if self._random:
                actions: Any = [client.action_space.sample() for _ in range(n)]
            elif fused:
                actions = model.predict_batch(obs)
            else:
                actions = [
                    model.predict(_lane(obs, i), {"episode_id": None, "episode_seed": _seed_of(lanes[i])})
                    for i in range(n)
                ]
            t1 = time.perf_counter()
            obs, rewards, terms, truncs, info = client.step(actions)
            t2 = time.perf_counter()
            rewards_l = rewards.tolist() if hasattr(rewards, "tolist") else list(rewards)
            terms_l = terms.tolist() if hasattr(terms, "tolist") else list(terms)
            truncs_l = truncs.tolist() if hasattr(truncs, "tolist") else list(truncs)
            share_predict = (t1 - t0) / n
            share_step = (t2 - t1) / n
            for i in range(n):
                episode = lanes[i]
                if pending[i]:
                    # The autoreset step of NextStep: the action was ignored and a new episode began.
                    pending[i] = False
                    lanes[i] = episode = self._begin_lane(next_index, target, hooks)
                    if episode is not None:
                        next_index += 1
                    continue
                if episode is None:
                    continue
                episode.steps += 1
                episode.reward += float(rewards_l[i])
                episode.predict_s += share_predict
                episode.step_s += share_step
                if terms_l[i] or truncs_l[i]:
                    final_info = info.get("final_info") if mode == "SameStep" else None
                    success = _success(final_info, i) if isinstance(final_info, dict) else _success(info, i)
                    result = episode.result(bool(terms_l[i]), bool(truncs_l[i]), success)
                    results.append(result)
                    model._episode_ended()
                    hooks.on_episode_end(result)
                    lanes[i] = None
                    if len(results) >= target:
                        break
                    if mode == "NextStep":
                        pending[i] = True
                    elif mode == "SameStep":
                        lanes[i] = self._begin_lane(next_index, target, hooks)
                        if lanes[i] is not None:
                            next_index += 1
            display.update(len(results), sum(r.steps for r in results))
            if mode == "Disabled" and all(lane is None for lane in lanes) and len(results) < target:
                # Autoreset disabled: every lane has ended; start them all again.
                obs, info = client.reset()
                for i in range(n):
                    lanes[i] = self._begin_lane(next_index, target, hooks)
                    if lanes[i] is not None:
                        next_index += 1
        self._last_done = True

    def _begin_lane(self, index: int, target: int, hooks: RunHooks) -> _Episode | None:
        if index >= target:
            return None
        hooks.on_episode_start(episode=index, seed=None)
        return _Episode(index, None)

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """End the session; see the class docstring. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._end_episode_early()
            self._model._closed()
        finally:
            self._target.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("idle" if self._last_done else "in an episode")
        return f"<Session {type(self._model).__name__} {state}>"


def _seed_of(episode: _Episode | None) -> int | None:
    return episode.seed if episode is not None else None


def _RANDOM_PREDICT(observation: Any) -> Any:  # noqa: N802 - a marker, never called
    raise AssertionError("RANDOM_SAMPLE never calls predict")


def _as_model(model: Any) -> ModelBase[Any, Any]:
    if isinstance(model, ModelBase):
        return model
    if model is RANDOM_SAMPLE:
        return Model(_RANDOM_PREDICT)
    if isinstance(model, type) and issubclass(model, ModelBase):
        return model()
    if callable(model):
        return Model(model)
    raise TypeError(f"expected a Model, a predict callable or RANDOM_SAMPLE, got {type(model).__name__}")


def run(
    model: Any,
    env: Any,
    *,
    seeds: Sequence[int] | None = None,
    max_episodes: int | None = None,
    max_episode_steps: int | None = None,
    max_episode_seconds: float | None = None,
    hooks: RunHooks | None = None,
    close_env: bool = False,
    progress: bool | None = None,
) -> RunResult:
    """Run ``model`` (a Model, a predict callable, a Model subclass or RANDOM_SAMPLE) against ``env``.

    See :meth:`ModelBase.run` for the arguments.

    Raises:
        TypeError: ``model`` is none of those. Everything :meth:`ModelBase.run` raises.
    """
    with Session._create(model, env, close_env=close_env, allow_vector=True) as s:
        return s.run(
            seeds=seeds,
            max_episodes=max_episodes,
            max_episode_steps=max_episode_steps,
            max_episode_seconds=max_episode_seconds,
            hooks=hooks,
            progress=progress,
        )


def session(model: Any, env: Any, *, close_env: bool = False) -> Session:
    """Connect ``model`` to one env and return a :class:`Session` to drive by hand.

    Raises:
        ValueError: ``env`` serves a vector env.
        TypeError: ``model`` is not a model, callable or RANDOM_SAMPLE.
    """
    return Session._create(model, env, close_env=close_env, allow_vector=False)
