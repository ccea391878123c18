"""What a run produces and reports: episode results, step events, run hooks.

Part of :mod:`rlmesh.models`, which re-exports the public names; they are
documented (and pickled) as ``rlmesh.models.*``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Session

__all__ = ["EpisodeResult", "EpisodeTotals", "Progress", "RunHooks", "RunResult", "StepEvent", "read_success"]


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
    """What :meth:`RunHooks.on_step` receives for every step.

    Attributes:
        episode: the episode's index in the run (0-based).
        seed: the episode's seed, or None.
        step: the step's index within the episode (0-based).
        observation: the observation the action was predicted from (before
            the step), so ``(observation, action, reward)`` is the transition.
        action: the action taken.
        reward: the step's reward.
        terminated: the env ended the episode on this step.
        truncated: a time limit (the env's or the runtime's) ended it.
        info: the step's info.
        predict_ms: time spent choosing the action, in milliseconds.
        step_ms: time spent in the env step (including the transport), in milliseconds.
    """

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


# -- success ------------------------------------------------------------------------------------


def _scalar(value: Any, i: int | None = None) -> Any:
    """A Python scalar from a per-lane array or list element."""
    item = value if i is None else (value[i] if not hasattr(value, "tolist") else value.tolist()[i])
    return item.item() if hasattr(item, "item") else item


def read_success(info: Any, lane: int | None = None) -> bool | None:
    """The env's success signal in a (final) info: ``is_success``, else ``success``, else None.

    For a vector info, ``lane`` picks the lane (honouring Gymnasium's ``_key`` masks).
    """
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


# -- episodes ----------------------------------------------------------------------


class EpisodeTotals:
    """Running totals of the episode in progress on one lane (or the single env)."""

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


# -- progress ---------------------------------------------------------------------------------


class Progress:
    """A run's progress as a ``tqdm`` bar: episodes done (of ``total``), steps, steps/s.

    Shown only when ``enabled`` (None: when ``stream``, default stderr, is a
    terminal) and only once the run has lasted :attr:`DELAY` seconds, so short
    runs print nothing; tqdm is imported when the bar first shows, never for a
    quiet run.
    """

    #: Seconds before the bar appears.
    DELAY = 2.0
    #: The least time between two redraws.
    INTERVAL = 0.2

    def __init__(self, stream: IO[str] | None, enabled: bool | None, total: int | None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.total = total
        self.start = time.monotonic()
        self.last = 0.0
        self._bar: Any = None

    def update(self, episodes: int, steps: int, force: bool = False) -> None:
        """Show ``episodes`` done and ``steps`` taken (at most every :attr:`INTERVAL` s unless ``force``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and (now - self.start < self.DELAY or now - self.last < self.INTERVAL):
            return
        self.last = now
        if self._bar is None:
            from tqdm import tqdm

            # Our clock drives the redraws (mininterval 0) and tqdm formats them: no draw
            # at creation (delay), the mean rate since the run began (smoothing 0 and a
            # start moved back to it).
            self._bar = tqdm(
                total=self.total,
                desc="rlmesh",
                unit="episode",
                file=self.stream,
                mininterval=0,
                smoothing=0,
                delay=1e-9,
                leave=True,
            )
            self._bar.start_t -= now - self.start
        rate = steps / max(now - self.start, 1e-9)
        self._bar.n = episodes
        self._bar.set_postfix_str(f"{steps:,} steps, {rate:,.0f} steps/s", refresh=False)
        self._bar.refresh()

    def finish(self, episodes: int, steps: int) -> None:
        """Draw the final state and end the bar's line (nothing if it never showed)."""
        if self._bar is not None:
            self.update(episodes, steps, force=True)
            self._bar.close()
            self._bar = None


for _public in (EpisodeResult, RunResult, StepEvent, RunHooks):
    _public.__module__ = "rlmesh.models"
