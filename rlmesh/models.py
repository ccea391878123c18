"""The model runtime: ``Model``, ``run``, ``session`` and their results.

A *model* turns observations into actions: ``rlmesh.Model(predict)`` wraps a
callable; a subclass overrides one or more of the four predict corners
(``predict``, ``predict_chunk``, ``predict_batch``, ``predict_chunk_batch``;
the missing ones are derived, see :mod:`rlmesh._corners`) and optionally
``load``, ``reset`` and ``close``. ``rlmesh.numpy.Model`` and
``rlmesh.jax.Model`` hand the corners NumPy or JAX observations; the plain
``rlmesh.Model`` hands them :class:`rlmesh.Tensor` leaves.

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

``execution_horizon=H`` (> 1) plays the first H actions of every chunk the
model predicts, one per step, before it predicts again; a new episode drops
what is left of a chunk.

A vector endpoint hands its whole batch to one call per step:
``predict_batch`` (defined or derived), else ``predict`` itself, which then
gets the ``(N, ...)`` observation and returns the ``(N, ...)`` action. The
counting rules and caps are the same as on a single env: each lane takes the
next episode of the plan when its episode ends, a seeded one through a
per-lane (masked) reset, so every seed runs exactly once and the results come
in plan order (see :mod:`rlmesh._vector_runs`, which also says which runs need
masked resets and what an endpoint that cannot do them raises).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

from ._corners import ChunkReplay
from ._lifecycle import Lifecycle, State

# The model classes live in their own module; the names are re-exported here.
from ._model_base import (
    ActT as ActT,
    Model as Model,
    ModelBase as ModelBase,
    ObsT as ObsT,
    _check_horizon as _check_horizon,
)
from ._results import EpisodeResult, EpisodeTotals, Progress, RunHooks, RunResult, StepEvent, read_success
from ._targets import Target
from ._vector_runs import run_vector
from .errors import ClosedError

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

#: The per-step state check compares against this (one global, no enum attribute lookup).
_OPEN = State.OPEN

#: Every episode stops here, marked truncated, whatever the env does.
MAX_EPISODE_STEPS = 100_000


class _RandomSample:
    """The policy that samples the env's action space each step."""

    def __repr__(self) -> str:
        return "RANDOM_SAMPLE"


#: Pass as the model to ``rlmesh.run`` / ``rlmesh.session`` to act at random.
RANDOM_SAMPLE = _RandomSample()


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


class Session:
    """A model connected to one env, driven by hand or by :meth:`run`.

    Lifetime:
        Made by :func:`rlmesh.session` or :meth:`Model.session`; it connects
        on creation. :meth:`close` ends the episode in progress, calls the
        model's ``close`` and ``on_close`` once, and releases what the session
        opened (a client it dialed, an env it served). It is idempotent; the
        context manager calls it. After close every method raises
        :class:`ClosedError` (a RuntimeError). A close from another thread
        wins over a step or reset in flight: closing the client makes that
        call raise ClosedError at once. A session never closed releases what
        it opened when garbage collected (detaching from a remote server, never
        asking it to stop), with a ``ResourceWarning``.
    """

    _life: Lifecycle
    _model: ModelBase[Any, Any]
    _target: Target
    _client: Any
    _vector: bool
    _episode: EpisodeTotals | None
    _context: dict[str, Any]
    _last_done: bool
    _episodes_begun: int
    _random: bool
    _horizon: int
    _replay: ChunkReplay | None

    def __init__(self) -> None:
        raise TypeError("create sessions with rlmesh.session(model, env) or Model.session(env)")

    @classmethod
    def _create(
        cls, model: ModelBase[Any, Any], env: Any, *, close_env: bool, allow_vector: bool, horizon: int
    ) -> Session:
        self = cls.__new__(cls)
        self._life = Lifecycle("session")
        self._model = model
        self._target = Target(model, env, close_env)
        self._client = self._target.client
        num_envs = self._client.num_envs
        if num_envs > 1 and not allow_vector:
            self._life.begin_close()
            self._life.finish_close()
            self._target.close()
            raise ValueError(
                f"session() drives one env, but this endpoint serves num_envs={num_envs}; "
                "use Model.run() for vector envs"
            )
        self._vector = num_envs > 1
        self._episode = None
        self._context = {"episode_id": None, "episode_seed": None}
        self._last_done = True
        self._episodes_begun = 0
        self._random = model._source is _RANDOM_PREDICT
        self._horizon = horizon
        self._replay = ChunkReplay(horizon) if horizon > 1 else None
        self._life.watch(self, Target.abandon, self._target)
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
    def execution_horizon(self) -> int:
        """How many actions of a predicted chunk are played (1: every step predicts)."""
        return self._horizon

    @property
    def done(self) -> bool:
        """True when no episode is in progress (before the first reset, after an episode ended)."""
        self._check()
        return self._last_done

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED (see :mod:`rlmesh._lifecycle`)."""
        return self._life.state

    @property
    def closed(self) -> bool:
        """True once closing began."""
        return self._life.closed

    def _check(self) -> None:
        if self._life.state is not _OPEN:
            raise ClosedError("session is closed")

    # -- hand-driven primitives ----------------------------------------------------------------

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Start an episode (ending the one in progress); returns ``(observation, info)``.

        What is left of a chunk being played is dropped.

        Raises:
            ClosedError: the session is closed. Errors of the env.
        """
        self._check()
        self._end_episode_early()
        self._model.reset()
        obs, info = self._client.reset(seed=seed)
        self._begin(self._episodes_begun, seed, info)
        self._episodes_begun += 1
        return obs, info

    def predict(self, observation: Any) -> Any:
        """The action for ``observation``, as :meth:`run` would choose it.

        With an ``execution_horizon`` above 1 it plays the model's chunk one
        action per call, predicting again when the chunk runs out. For
        RANDOM_SAMPLE, a sample of the action space.

        Raises:
            ClosedError: the session is closed. Errors of the model.
        """
        self._check()
        return self._act(observation)

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

    def _begin(self, index: int, seed: int | None, info: dict[str, Any]) -> EpisodeTotals:
        """Record the episode that the reset returning ``info`` began."""
        ids = info.get("episode_ids")
        episode = EpisodeTotals(index, seed, ids[0] if isinstance(ids, list) and ids else None)
        self._episode = episode
        self._context = {"episode_id": episode.episode_id, "episode_seed": seed}
        self._last_done = False
        if self._replay is not None:
            self._replay.clear()  # a chunk never carries over into the next episode
        return episode

    def _act(self, observation: Any) -> Any:
        if self._random:
            return self._client.action_space.sample()
        corners = self._model._corners
        replay = self._replay
        if replay is None:
            return corners.predict(observation, self._context)
        chunk = corners.predict_chunk
        assert chunk is not None  # the horizon is 1 without a chunk corner
        return replay.next(lambda: chunk(observation, self._horizon, self._context))

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

        The session's ``execution_horizon`` applies.

        Raises:
            ValueError: bad counts or caps. Errors of the env or model, with
            the episodes finished so far as ``partial_result``.
        """
        self._check()
        plan = _plan(seeds, max_episodes)
        _check_caps(max_episode_steps, max_episode_seconds)
        hooks = hooks if hooks is not None else RunHooks()
        results: list[EpisodeResult] = []
        display = Progress(None, progress, len(plan))
        failure: BaseException | None = None
        try:
            hooks.on_run_start(self)
            if plan:
                if self._vector:
                    run_vector(
                        self,
                        plan,
                        hooks,
                        results,
                        display,
                        limit=MAX_EPISODE_STEPS,
                        max_steps=max_episode_steps,
                        max_seconds=max_episode_seconds,
                    )
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

    def _run_episode(
        self,
        index: int,
        seed: int | None,
        hooks: RunHooks,
        max_steps: int | None,
        max_seconds: float | None,
        display: Progress,
        results: list[EpisodeResult],
    ) -> EpisodeResult:
        hooks.on_episode_start(episode=index, seed=seed)
        self._end_episode_early()
        self._model.reset()
        obs, info = self._client.reset(seed=seed)
        episode = self._begin(index, seed, info)
        cap = min(max_steps or MAX_EPISODE_STEPS, MAX_EPISODE_STEPS)
        deadline = None if max_seconds is None else episode.start + max_seconds
        client_step = self._client.step
        act = self._act
        wants_steps = type(hooks).on_step is not RunHooks.on_step
        done_steps = sum(r.steps for r in results)
        terminated = truncated = False
        while True:
            t0 = time.perf_counter()
            action = act(obs)
            t1 = time.perf_counter()
            next_obs, reward, terminated, truncated, info = client_step(action)
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
                # The observation the action was predicted from, so that
                # (observation, action, reward) is the step's transition.
                hooks.on_step(
                    StepEvent(
                        episode=index,
                        seed=seed,
                        step=episode.steps - 1,
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
            obs = next_obs
            display.update(len(results), done_steps + episode.steps)
            if terminated or truncated:
                break
        self._episode = None
        self._last_done = True
        result = episode.result(terminated, truncated, read_success(info))
        self._model._episode_ended()
        hooks.on_episode_end(result)
        return result

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """End the session; see the class docstring. Idempotent."""
        if not self._life.begin_close():
            return
        try:
            self._life.forget()
            try:
                self._end_episode_early()
                self._model._closed()
            finally:
                self._target.close()
        finally:
            self._life.finish_close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._life.closed else ("idle" if self._last_done else "in an episode")
        return f"<Session {type(self._model).__name__} {state}>"


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


def _open(
    model: Any, env: Any, *, close_env: bool, allow_vector: bool, execution_horizon: Any, stacklevel: int
) -> Session:
    """Check the horizon, build the model, then connect: the shared entry of run and session.

    ``stacklevel`` points the un-chunked warning at the caller of the public function.

    Raises:
        ValueError: a bad ``execution_horizon``, before the model is built or anything connects.
    """
    horizon = _check_horizon(execution_horizon)
    built = _as_model(model)
    if horizon > 1 and built._corners.predict_chunk is None:
        warnings.warn(
            f"execution_horizon={horizon} was requested but the model defines no predict_chunk() "
            "or predict_chunk_batch(); running un-chunked",
            UserWarning,
            stacklevel=stacklevel,
        )
        horizon = 1
    return Session._create(built, env, close_env=close_env, allow_vector=allow_vector, horizon=horizon)


def _run(
    model: Any,
    env: Any,
    *,
    seeds: Sequence[int] | None,
    max_episodes: int | None,
    max_episode_steps: int | None,
    max_episode_seconds: float | None,
    hooks: RunHooks | None,
    close_env: bool,
    progress: bool | None,
    execution_horizon: Any,
) -> RunResult:
    # Four frames up from _open's warning: _open, _run, run or Model.run, the caller.
    with _open(
        model, env, close_env=close_env, allow_vector=True, execution_horizon=execution_horizon, stacklevel=4
    ) as s:
        return s.run(
            seeds=seeds,
            max_episodes=max_episodes,
            max_episode_steps=max_episode_steps,
            max_episode_seconds=max_episode_seconds,
            hooks=hooks,
            progress=progress,
        )


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
    execution_horizon: int = 1,
) -> RunResult:
    """Run ``model`` (a Model, a predict callable, a Model subclass or RANDOM_SAMPLE) against ``env``.

    See :meth:`ModelBase.run` for the arguments.

    Raises:
        TypeError: ``model`` is none of those. Everything :meth:`ModelBase.run` raises.
    """
    return _run(
        model,
        env,
        seeds=seeds,
        max_episodes=max_episodes,
        max_episode_steps=max_episode_steps,
        max_episode_seconds=max_episode_seconds,
        hooks=hooks,
        close_env=close_env,
        progress=progress,
        execution_horizon=execution_horizon,
    )


def session(model: Any, env: Any, *, close_env: bool = False, execution_horizon: int = 1) -> Session:
    """Connect ``model`` to one env and return a :class:`Session` to drive by hand.

    ``execution_horizon`` works as in :meth:`ModelBase.run`.

    Raises:
        ValueError: ``env`` serves a vector env; a bad ``execution_horizon``
            (before connecting).
        TypeError: ``model`` is not a model, callable or RANDOM_SAMPLE.
    """
    return _open(
        model, env, close_env=close_env, allow_vector=False, execution_horizon=execution_horizon, stacklevel=3
    )
