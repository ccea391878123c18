"""The model runtime's loop over a vector endpoint: every episode seeded, counted once.

Part of :mod:`rlmesh.models` (``Session.run`` on an endpoint with
``num_envs > 1``). The plan is the single-env plan (see the counting rules in
:mod:`rlmesh.models`): one entry per episode, its seed or None. Each lane takes
the next entry of the plan when its episode ends, so every entry is run
exactly once, and the results come back in plan order whatever lane ran them.

How a lane starts its next episode, per autoreset mode:

* NextStep: the env resets an ended lane on its next step (the action is
  ignored); an unseeded episode begins there. A seeded one is then reset
  with its seed by a *masked reset*: ``reset(seed=[...], options={"reset_mask":
  mask})``, which resets only the lanes the mask marks. Waiting for the
  autoreset step first means the runtime never relies on a masked reset
  cancelling a pending autoreset (Gymnasium 1.4's ``AsyncVectorEnv`` without
  shared memory does not cancel it).
* SameStep: the env already reset the lane within the step; an unseeded
  episode begins there, a seeded one is reset with its seed by a masked reset.
* Disabled: every lane that ended (and every lane a cap cut) is reset by a
  masked reset, also lanes with no episode left to run (the env refuses to
  step an ended lane).

A lane cut by ``max_episode_steps``, ``max_episode_seconds`` or the 100,000
steps cap (marked truncated, as on a single env) is reset by a masked reset in
every mode. When every lane needs a reset at once, one plain reset does it
(no mask), so an endpoint that cannot do masked resets still serves runs whose
lanes end together.

Runs that need no masked reset (unseeded NextStep or SameStep runs without
caps, seeds only for the first episode of each lane) never send one. A run
that needs one on an endpoint that cannot do it fails with a ValueError at its
first masked reset, rather than return wrong counts: the env raised on the
mask, or ignored it (a lane outside the mask came back with an observation
other than the one it had).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._corners import LaneReplay, lane_planner
from ._results import EpisodeResult, EpisodeTotals, Progress, RunHooks, read_success
from .errors import RemoteError
from .tensor import Tensor

if TYPE_CHECKING:
    from .models import Session

__all__ = ["run_vector"]

#: The seed the wire carries for a lane outside a masked reset's mask. Seed
#: lists hold ints only (the client and server refuse None entries); the env
#: ignores the seeds of lanes it does not reset.
_UNUSED_SEED = 0


def run_vector(
    session: Session,
    plan: list[int | None],
    hooks: RunHooks,
    results: list[EpisodeResult],
    display: Progress,
    *,
    limit: int,
    max_steps: int | None,
    max_seconds: float | None,
) -> None:
    """Run the episodes of ``plan`` on the session's vector endpoint.

    Finished episodes are inserted into ``results`` in plan order as they end
    (so a failure leaves the finished ones there). Every episode is cut at
    ``limit`` steps (the runtime's cap), ``max_steps`` and ``max_seconds``.

    Raises:
        ValueError: the run needs a masked reset and the endpoint cannot do
            one (see the module docstring). Errors of the env or the model.
    """
    cap = min(max_steps or limit, limit)
    if max_steps is not None or max_seconds is not None:
        why = "cut single episodes at max_episode_steps / max_episode_seconds"
    elif session._client.autoreset_mode == "Disabled":
        why = "start the next episode on a lane whose episode ended (autoreset is Disabled)"
    else:
        why = "seed every episode, not only the first one of each lane"
    _VectorRun(session, plan, hooks, results, display, cap, max_seconds, why).run()


class _VectorRun:
    """The state of one run over the lanes of a vector endpoint."""

    def __init__(
        self,
        session: Session,
        plan: list[int | None],
        hooks: RunHooks,
        results: list[EpisodeResult],
        display: Progress,
        cap: int,
        max_seconds: float | None,
        why: str,
    ) -> None:
        self.session = session
        self.client = session._client
        self.n: int = self.client.num_envs
        self.mode: str = self.client.autoreset_mode
        self.plan = plan
        self.hooks = hooks
        self.results = results
        self.display = display
        self.cap = cap
        self.max_seconds = max_seconds
        self.next_index = 0
        self.total_steps = 0
        #: Each lane's episode in progress (or waiting to begin), None when idle.
        self.lanes: list[EpisodeTotals | None] = [None] * self.n
        self.ids: list[Any] = [None] * self.n
        self.resets = _MaskedResets(self.client, self.n, why)

    # -- episodes ---------------------------------------------------------------------------

    def claim(self) -> EpisodeTotals | None:
        """The plan's next episode, announced to the hooks; None once every episode was claimed."""
        index = self.next_index
        if index >= len(self.plan):
            return None
        self.next_index += 1
        seed = self.plan[index]
        self.hooks.on_episode_start(episode=index, seed=seed)
        return EpisodeTotals(index, seed)

    def finish(self, episode: EpisodeTotals, terminated: bool, truncated: bool, success: bool | None) -> None:
        result = episode.result(terminated, truncated, success)
        bisect.insort(self.results, result, key=_index)
        self.total_steps += result.steps
        self.session._model._episode_ended()
        self.hooks.on_episode_end(result)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        session, client, n, mode = self.session, self.client, self.n, self.mode
        target = len(self.plan)
        lanes = self.lanes
        session._model.reset()
        for i in range(n):
            lanes[i] = self.claim()
        first = {i: _seed(lanes[i]) for i in range(n)}
        if any(seed is not None for seed in first.values()) and all(
            seed is not None or lanes[i] is None for i, seed in first.items()
        ):
            # Every lane with an episode is seeded: lanes without one (a plan
            # shorter than N) take any seed, so one plain reset does it.
            first = {i: _UNUSED_SEED if seed is None else seed for i, seed in first.items()}
        obs, info = self.resets.reset(first, None)
        self.ids[:] = info.get("episode_ids") or [None] * n
        self.begin(range(n), info)
        decide, replay = _policy(session, lanes, self.ids)
        # NextStep: the lane's next step is its autoreset step (its action is ignored).
        pending = [False] * n
        while len(self.results) < target:
            t0 = time.perf_counter()
            if replay is not None:
                actions: Any = replay.actions(obs, pending)
            else:
                assert decide is not None
                actions = decide(obs)
            t1 = time.perf_counter()
            obs, rewards, terms, truncs, info = client.step(actions)
            t2 = time.perf_counter()
            self.ids[:] = info.get("episode_ids") or [None] * n
            rewards_l = _as_list(rewards)
            terms_l = _as_list(terms)
            truncs_l = _as_list(truncs)
            share_predict = (t1 - t0) / n
            share_step = (t2 - t1) / n
            now = time.monotonic()
            wanted: dict[int, int | None] = {}
            started: list[int] = []
            restarted = _restarted(info, n)
            for i in range(n):
                episode = lanes[i]
                if restarted is not None and restarted[i]:
                    # The lane's worker died and was respawned (the server's restart
                    # policy): its env is new, so the episode in progress starts over,
                    # a seeded one from its seed (a masked reset), an unseeded one with
                    # the new env's episode, which begins at this step.
                    pending[i] = False
                    if replay is not None:
                        replay.clear(i)
                    if episode is not None:
                        episode.steps, episode.reward = 0, 0.0
                        episode.predict_s = episode.step_s = 0.0
                        if episode.seed is None:
                            started.append(i)
                        else:
                            wanted[i] = episode.seed
                    continue
                ended = bool(terms_l[i] or truncs_l[i])
                if ended and replay is not None:
                    replay.clear(i)  # the rest of the chunk belonged to the ended episode
                if pending[i]:
                    # The autoreset step: the lane's new (unseeded) episode begins here,
                    # a seeded one with the masked reset below.
                    pending[i] = False
                    if episode is not None:
                        if episode.seed is None:
                            started.append(i)
                        else:
                            wanted[i] = episode.seed
                    continue
                if episode is None:
                    if ended and mode == "Disabled":
                        wanted[i] = None  # an idle lane the env would refuse to step
                    continue
                episode.steps += 1
                episode.reward += float(rewards_l[i])
                episode.predict_s += share_predict
                episode.step_s += share_step
                cut = not ended and (
                    episode.steps >= self.cap
                    or (self.max_seconds is not None and now >= episode.start + self.max_seconds)
                )
                if not (ended or cut):
                    continue
                if ended:
                    final_info = info.get("final_info") if mode == "SameStep" else None
                    success = (
                        read_success(final_info, i) if isinstance(final_info, dict) else read_success(info, i)
                    )
                    self.finish(episode, bool(terms_l[i]), bool(truncs_l[i]), success)
                else:
                    self.finish(episode, False, True, read_success(info, i))  # cut by the runtime's caps
                if len(self.results) >= target:
                    break
                lanes[i] = nxt = self.claim()
                if cut:
                    if nxt is not None:
                        wanted[i] = nxt.seed
                elif mode == "NextStep":
                    pending[i] = True
                elif mode == "SameStep" and nxt is not None and nxt.seed is None:
                    started.append(i)  # the env already reset the lane within this step
                elif mode == "Disabled" or nxt is not None:
                    wanted[i] = _seed(nxt)
            self.display.update(len(self.results), self.total_steps)
            if len(self.results) >= target:
                break
            self.begin(started, info)
            if wanted:
                obs, info = self.resets.reset(wanted, obs)
                self.ids[:] = info.get("episode_ids") or [None] * n
                if replay is not None:
                    for i in wanted:
                        replay.clear(i)
                self.begin(list(wanted), info)
        session._last_done = True

    def begin(self, which: Any, info: dict[str, Any]) -> None:
        """The episodes of lanes ``which`` begin now (after their reset)."""
        ids = info.get("episode_ids")
        now = time.monotonic()
        for i in which:
            episode = self.lanes[i]
            if episode is not None:
                episode.start = now
                if isinstance(ids, list) and len(ids) == self.n:
                    episode.episode_id = ids[i]


def _index(result: EpisodeResult) -> int:
    return result.index


def _seed(episode: EpisodeTotals | None) -> int | None:
    return episode.seed if episode is not None else None


def _restarted(info: dict[str, Any], n: int) -> list[bool] | None:
    """Per lane, whether a restarted worker reset it (``info["rlmesh_restarted"]``); None if none did."""
    flags = info.get("rlmesh_restarted")
    if flags is None:
        return None
    mask = info.get("_rlmesh_restarted", flags)
    out = [bool(f) and bool(m) for f, m in zip(_as_list(flags), _as_list(mask), strict=False)]
    return out if len(out) == n else None


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


# -- actions ---------------------------------------------------------------------------------


def _policy(
    session: Session, lanes: list[EpisodeTotals | None], ids: list[Any]
) -> tuple[Callable[[Any], Any] | None, LaneReplay | None]:
    """How a vector step chooses its actions: one batched call, or per-lane chunk replay.

    ``lanes`` and ``ids`` are the loop's live per-lane state, read when a
    corner wants its batched context.
    """
    client = session._client
    n = client.num_envs
    corners = session._model._corners

    def context() -> dict[str, Any]:
        # A batched context: every value gains the lane axis, as observations do.
        return {"episode_id": list(ids), "episode_seed": [_seed(e) for e in lanes]}

    if session._random:
        return (lambda obs: [client.action_space.sample() for _ in range(n)]), None
    if session._horizon > 1:
        return None, LaneReplay(n, lane_planner(corners, n, session._horizon, context))
    if corners.predict_batch is not None:
        return corners.predict_batch, None
    # No batched corner: predict gets the whole batch as one observation.
    predict = corners.predict
    if corners.predict_takes_context:
        return (lambda obs: predict(obs, context())), None
    return (lambda obs: predict(obs, None)), None


# -- resets ----------------------------------------------------------------------------------


class _MaskedResets:
    """Resets some lanes of a vector endpoint, and checks that it can.

    ``reset(wanted, before)`` resets the lanes in ``wanted`` (lane -> seed or
    None). All N lanes: one plain reset when the seeds are all given or all
    None. Otherwise masked resets: one for the seeded lanes, one for the
    unseeded ones. After a masked reset the lanes outside the mask must show
    the observation they had (``before``): a lane that changed means the
    endpoint ignored the mask.
    """

    def __init__(self, client: Any, n: int, why: str) -> None:
        self.client = client
        self.n = n
        self.why = why
        self.proven = False  # a masked reset has worked on this endpoint

    def reset(self, wanted: dict[int, int | None], before: Any) -> tuple[Any, dict[str, Any]]:
        client, n = self.client, self.n
        seeded = {i: s for i, s in wanted.items() if s is not None}
        if len(wanted) == n and len(seeded) in (0, n):
            obs, info = client.reset(seed=[seeded[i] for i in range(n)] if seeded else None)
            return obs, info
        unseeded = [i for i, s in wanted.items() if s is None]
        if before is None:
            # The very first reset: every lane must be reset before one is masked.
            before, info = client.reset(seed=None)
            unseeded = []
        obs, info = before, {}
        if seeded:
            obs, info = self.masked(sorted(seeded), [seeded.get(i, _UNUSED_SEED) for i in range(n)], obs)
        if unseeded:
            obs, info = self.masked(unseeded, None, obs)
        return obs, info

    def masked(self, lanes: list[int], seeds: list[int] | None, before: Any) -> tuple[Any, dict[str, Any]]:
        """A masked reset of ``lanes``; ``before`` is the batch's observation before it.

        Raises:
            ValueError: the endpoint cannot reset single lanes.
        """
        mask = _mask(self.n, lanes)
        try:
            obs, info = self.client.reset(seed=seeds, options={"reset_mask": mask})
        except (RemoteError, ValueError, TypeError) as exc:
            if self.proven:
                raise  # the endpoint did masked resets before: this is the env's own error
            raise ValueError(
                f"this vector endpoint cannot reset single lanes: the masked reset "
                f"reset(seed=[...], options={{'reset_mask': mask}}) failed ({exc}). The run needs it to "
                f"{self.why}; serve a Gymnasium 1.x vector env (they all accept reset_mask)"
            ) from exc
        kept = [i for i in range(self.n) if i not in set(lanes)]
        changed = [i for i in kept if _lane_key(obs, i) != _lane_key(before, i)]
        if changed:
            raise ValueError(
                f"this vector endpoint ignored options['reset_mask']: a masked reset of lanes {lanes} also "
                f"changed lanes {changed}, so it cannot reset single lanes. The run needs it to {self.why}; "
                "serve a Gymnasium 1.x vector env (they all honour reset_mask)"
            )
        self.proven = True
        return obs, info


def _mask(n: int, lanes: list[int]) -> Any:
    """The reset mask: a numpy bool array (a list of bools where numpy is missing)."""
    flags = [False] * n
    for i in lanes:
        flags[i] = True
    try:
        import numpy
    except ImportError:  # pragma: no cover - exercised only without numpy
        return flags
    return numpy.array(flags, dtype=bool)


def _lane_key(obs: Any, lane: int) -> Any:
    """Lane ``lane``'s part of a batched observation, as comparable values (bytes for arrays)."""
    if isinstance(obs, dict):
        return tuple((key, _lane_key(value, lane)) for key, value in obs.items())
    if isinstance(obs, (list, tuple)):
        if obs and all(isinstance(v, str) for v in obs):
            return obs[lane]  # a batch of texts, one per lane
        return tuple(_lane_key(v, lane) for v in obs)
    item = obs[lane]
    if isinstance(item, Tensor):
        return item.tobytes()
    if hasattr(item, "tobytes"):
        return item.tobytes()
    if hasattr(item, "__array__"):
        import numpy

        return numpy.asarray(item).tobytes()
    return item
