"""The envs of ``bench_vector``, importable by reference (``benchmarks._vector_envs:make_pixels``).

Every row of the vector benchmark builds its lanes from these module-level,
zero-argument factories: gymnasium's vector envs and PufferLib pickle them into
their worker processes, and ``rlmesh serve`` imports them by name in its own.

* :func:`make_cartpole`: ``gymnasium.make("CartPole-v1")``, the same wrappers
  for every row.
* :func:`make_pixels`: :class:`PixelEnv`, 84x84x4 uint8 frames (Atari's stacked
  frame shape) whose step costs next to nothing but writes a whole new frame,
  so a row's rate measures moving 28 KiB per lane and step, not computing it.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

__all__ = ["PIXEL_SHAPE", "PixelEnv", "make_cartpole", "make_pixels"]

#: The pixel workload's observation shape (84x84 frames, 4 stacked).
PIXEL_SHAPE = (84, 84, 4)


class PixelEnv(gymnasium.Env[np.ndarray, np.int64]):
    """A deterministic env with 84x84x4 uint8 observations and two actions.

    ``reset(seed=s)`` draws the episode's base intensity from the env's seeded
    generator; step ``t`` fills a whole frame with ``base + t + action`` (mod
    256) and writes ``t`` into its first pixel, so every observation is new and
    depends on the seed and the actions. Two frames alternate: the frame a step
    returns stays intact until the step after next, longer than any vector env
    takes to copy it. The reward is the action; episodes are truncated after
    ``episode_length`` steps.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, episode_length: int = 500) -> None:
        self.observation_space = gymnasium.spaces.Box(0, 255, PIXEL_SHAPE, np.uint8)
        self.action_space = gymnasium.spaces.Discrete(2)
        self._frames = [np.zeros(PIXEL_SHAPE, np.uint8) for _ in range(2)]
        self._episode_length = episode_length
        self._base = 0
        self._t = 0

    def _frame(self, action: int) -> np.ndarray:
        frame = self._frames[self._t & 1]
        frame.fill((self._base + self._t + action) & 0xFF)
        frame[0, 0, 0] = self._t & 0xFF
        return frame

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; ``seed`` reseeds the env's generator."""
        super().reset(seed=seed)
        self._base = int(self.np_random.integers(0, 256))
        self._t = 0
        return self._frame(0), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Advance one step: a new frame, reward = action, truncated at the episode length."""
        act = int(action)
        self._t += 1
        return self._frame(act), float(act), False, self._t >= self._episode_length, {}


def make_pixels() -> PixelEnv:
    """One :class:`PixelEnv` (the 84x84x4 workload's lane)."""
    return PixelEnv()


def make_cartpole() -> Any:
    """One ``gymnasium.make("CartPole-v1")`` (the CartPole workload's lane)."""
    return gymnasium.make("CartPole-v1")
