"""Small envs for the tests, importable by `rlmesh serve tests.envs:NAME` subprocesses too."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from rlmesh import spaces


class TinyEnv:
    """Discrete(2) observations and actions; terminates after `limit` steps; counts closes."""

    metadata: dict[str, Any] = {"render_modes": []}
    render_mode = None

    def __init__(self, limit: int = 3) -> None:
        self.observation_space = spaces.Discrete(2)
        self.action_space = spaces.Discrete(2)
        self.limit = limit
        self.t = 0
        self.close_calls = 0
        self.seen_seeds: list[Any] = []
        self.seen_options: list[Any] = []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        self.t = 0
        self.seen_seeds.append(seed)
        self.seen_options.append(options)
        return 0, {"seed": seed, "options": options}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        self.t += 1
        return int(action), 1.0, self.t >= self.limit, False, {"action": int(action)}

    def close(self) -> None:
        self.close_calls += 1


class CountEnv:
    """Box observations [t, action, seed, pid]; float64 from the env for a float32 space.

    ``width`` > 4 pads the observation with zeros (4096: 16 KiB, a leaf that
    travels in a slab block over shared memory instead of inline).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, limit: int = 100, render_mode: str | None = "rgb_array", width: int = 4) -> None:
        self.width = width
        self.observation_space = spaces.Box(-1e9, 1e9, (width,), "float32")
        self.action_space = spaces.Discrete(3)
        self.render_mode = render_mode
        self.limit = limit
        self.t = 0
        self.seed_value = -1

    def _obs(self, action: int) -> np.ndarray:
        obs = np.zeros(self.width, dtype=np.float64)
        obs[:4] = (self.t, action, self.seed_value, os.getpid())
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self.t = 0
        self.seed_value = -1 if seed is None else seed
        return self._obs(0), {"episode_ids": "env-owned", "custom": np.arange(3)}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        return self._obs(int(action)), float(self.t), False, self.t >= self.limit, {"t": self.t}

    def render(self) -> np.ndarray:
        frame = np.zeros((6, 8, 3), dtype=np.uint8)
        frame[..., 0] = self.t % 256
        frame[0, 0] = (1, 2, 3)
        return frame

    def close(self) -> None:
        pass


class SlowEnv(TinyEnv):
    """Sleeps `delay` seconds in step (a hung env, for timeouts)."""

    def __init__(self, delay: float = 2.0) -> None:
        super().__init__(limit=1000)
        self.delay = delay
        self.entered = threading.Event()

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        self.entered.set()
        time.sleep(self.delay)
        return super().step(action)


class GateEnv(TinyEnv):
    """Blocks in step until `gate` is set (at most `hold` seconds): a call held in flight on purpose."""

    def __init__(self, hold: float = 10.0) -> None:
        super().__init__(limit=1000)
        self.hold = hold
        self.gate = threading.Event()
        self.entered = threading.Event()

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        self.entered.set()
        self.gate.wait(self.hold)
        return super().step(action)


class FailingEnv(TinyEnv):
    """Raises in step when the action is 1, in reset when options ask for it."""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        if options and options.get("fail"):
            raise KeyError("reset was asked to fail")
        return super().reset(seed=seed, options=options)

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        if action == 1:
            raise ZeroDivisionError("division by zero in the env")
        return super().step(action)


class LegacyEnv:
    """The old gym API: reset returns obs only, step returns 4 values."""

    metadata: dict[str, Any] = {}

    def __init__(self, limit: int = 2, time_limit: bool = True) -> None:
        self.observation_space = spaces.Discrete(5)
        self.action_space = spaces.Discrete(2)
        self.limit = limit
        self.time_limit = time_limit
        self.t = 0

    def reset(self) -> int:
        self.t = 0
        return 0

    def step(self, action: int) -> tuple[int, float, bool, dict[str, Any]]:
        self.t += 1
        done = self.t >= self.limit
        info = {"TimeLimit.truncated": True} if done and self.time_limit else {}
        return self.t, 0.5, done, info

    def close(self) -> None:
        pass


class BoxActionEnv:
    """Box(-1, 1, (2,), float32) actions and Dict observations with a Tuple inside."""

    metadata: dict[str, Any] = {}
    render_mode = None

    def __init__(self) -> None:
        self.action_space = spaces.Box(-1.0, 1.0, (2,), "float32")
        self.observation_space = spaces.Dict(
            {
                "pos": spaces.Box(-10.0, 10.0, (2,), "float32"),
                "pair": spaces.Tuple([spaces.Discrete(4), spaces.Text(8)]),
                "image": spaces.Box(0, 255, (32, 32, 3), "uint8"),
            }
        )
        self.last_action: Any = None

    def _obs(self) -> dict[str, Any]:
        pos = (
            np.zeros(2, np.float32) if self.last_action is None else np.asarray(self.last_action, np.float32)
        )
        image = np.full((32, 32, 3), 7, np.uint8)
        return {"pos": pos, "pair": (2, "hi"), "image": image}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        self.last_action = None
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        assert isinstance(action, np.ndarray) and action.dtype == np.float32 and action.shape == (2,)
        self.last_action = action.copy()
        return self._obs(), float(action.sum()), False, False, {}

    def close(self) -> None:
        pass


class TinyVectorEnv:
    """A duck-typed vector env of N TinyEnv-like lanes with NextStep autoreset."""

    metadata: dict[str, Any] = {"autoreset_mode": "NextStep"}
    render_mode = "rgb_array"

    def __init__(self, num_envs: int = 2, limit: int = 2) -> None:
        self.num_envs = num_envs
        self.single_observation_space = spaces.Box(-100.0, 100.0, (3,), "float32")
        self.single_action_space = spaces.Discrete(3)
        self.observation_space = self.single_observation_space
        self.action_space = self.single_action_space
        self.limit = limit
        self.t = np.zeros(num_envs, np.int64)
        self.done = np.zeros(num_envs, bool)
        self.closed = 0
        self.last_seed: Any = None

    def _obs(self, actions: np.ndarray) -> np.ndarray:
        lanes = np.arange(self.num_envs)
        return np.stack([lanes, self.t, actions], axis=1).astype(np.float32)

    def reset(
        self, *, seed: Any = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self.last_seed = seed
        self.t[:] = 0
        self.done[:] = False
        return self._obs(np.zeros(self.num_envs, np.int64)), {"seed": seed}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = np.asarray(actions)
        assert actions.shape == (self.num_envs,)
        # NextStep: lanes that ended last step are reset now.
        self.t[self.done] = 0
        self.t[~self.done] += 1
        terminated = self.t >= self.limit
        self.done = terminated.copy()
        return (
            self._obs(actions),
            self.t.astype(np.float64),
            terminated,
            np.zeros(self.num_envs, bool),
            {"actions": actions},
        )

    def render(self) -> tuple[np.ndarray, ...]:
        return tuple(np.full((2, 2, 3), i, np.uint8) for i in range(self.num_envs))

    def close(self) -> None:
        self.closed += 1


def make_count_env() -> CountEnv:
    return CountEnv()


def make_slow_env(delay: float = 30.0) -> SlowEnv:
    return SlowEnv(delay)


def make_vector_env() -> TinyVectorEnv:
    return TinyVectorEnv(3)


class JaxEnv:
    """A JAX-native env: step does jnp arithmetic and refuses anything but jax.Array actions.

    Dict actions: "move" (Box(-1, 1, (3,), float32)) must arrive as a jax.Array,
    "mode" (Discrete(2)) as a Python int. Observations, reward and flags are JAX
    values; `devices` records where each "move" action lived.
    """

    metadata: dict[str, Any] = {}
    render_mode = None

    def __init__(self, limit: int = 1000) -> None:
        import jax.numpy as jnp

        self.observation_space = spaces.Box(-100.0, 100.0, (3,), "float32")
        self.action_space = spaces.Dict(
            {"move": spaces.Box(-1.0, 1.0, (3,), "float32"), "mode": spaces.Discrete(2)}
        )
        self.limit = limit
        self.t = 0
        self.state = jnp.zeros(3, jnp.float32)
        self.devices: list[Any] = []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        import jax.numpy as jnp

        self.t = 0
        self.state = jnp.full(3, 0.0 if seed is None else float(seed), jnp.float32)
        return self.state, {"seed": seed}

    def step(self, action: dict[str, Any]) -> tuple[Any, Any, Any, bool, dict[str, Any]]:
        import jax
        import jax.numpy as jnp

        move, mode = action["move"], action["mode"]
        if not isinstance(move, jax.Array):
            raise TypeError(f"JaxEnv wants jax.Array actions, got {type(move).__name__}")
        if type(mode) is not int:
            raise TypeError(f"JaxEnv wants an int mode, got {type(mode).__name__}")
        self.devices.append(move.devices())
        self.t += 1
        self.state = self.state + jnp.where(mode == 1, 2.0, 1.0) * move
        return (
            self.state,
            jnp.sum(move),
            jnp.asarray(self.t >= self.limit),
            False,
            {"norm": jnp.sum(self.state)},
        )

    def close(self) -> None:
        pass


class JaxVectorEnv:
    """A vector env of 2 lanes written in JAX: actions must be one jax.Array of shape (2, 2)."""

    metadata: dict[str, Any] = {"autoreset_mode": "NextStep"}
    render_mode = None

    def __init__(self) -> None:
        import jax.numpy as jnp

        self.num_envs = 2
        self.single_observation_space = spaces.Box(-100.0, 100.0, (2,), "float32")
        self.single_action_space = spaces.Box(-1.0, 1.0, (2,), "float32")
        self.observation_space = self.single_observation_space
        self.action_space = self.single_action_space
        self.state = jnp.zeros((2, 2), jnp.float32)

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        import jax.numpy as jnp

        self.state = jnp.zeros((2, 2), jnp.float32)
        return self.state, {}

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        import jax
        import jax.numpy as jnp

        if not isinstance(actions, jax.Array) or actions.shape != (2, 2):
            raise TypeError(f"JaxVectorEnv wants a (2, 2) jax.Array, got {type(actions).__name__}")
        self.state = self.state + actions
        return self.state, actions.sum(axis=1), jnp.zeros(2, bool), jnp.zeros(2, bool), {}

    def close(self) -> None:
        pass


def make_jax_env() -> JaxEnv:
    return JaxEnv()


class ScriptedObsEnv:
    """Returns the observations it is given, in order, from reset then each step.

    `obs` is a list of observations (the last one repeats). The space is whatever
    the test passes; actions are Discrete(2) and ignored.
    """

    metadata: dict[str, Any] = {}
    render_mode = None

    def __init__(self, observation_space: Any, obs: list[Any]) -> None:
        self.observation_space = observation_space
        self.action_space = spaces.Discrete(2)
        self.obs = list(obs)
        self.i = 0

    def _next(self) -> Any:
        value = self.obs[min(self.i, len(self.obs) - 1)]
        self.i += 1
        return value

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if options and "rewind" in options:
            self.i = int(options["rewind"])
        return self._next(), {"from": "reset"}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return self._next(), 0.0, False, False, {"from": "step"}

    def close(self) -> None:
        pass


class ScriptedVectorEnv:
    """A 2-lane vector env replaying batched observations (NextStep autoreset)."""

    metadata: dict[str, Any] = {"autoreset_mode": "NextStep"}
    render_mode = None

    def __init__(self, single_observation_space: Any, obs: list[Any]) -> None:
        self.num_envs = 2
        self.single_observation_space = single_observation_space
        self.single_action_space = spaces.Discrete(2)
        self.observation_space = single_observation_space
        self.action_space = self.single_action_space
        self.obs = list(obs)
        self.i = 0

    def _next(self) -> Any:
        value = self.obs[min(self.i, len(self.obs) - 1)]
        self.i += 1
        return value

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        return self._next(), {}

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        return self._next(), np.zeros(2), np.zeros(2, bool), np.zeros(2, bool), {"lanes": [0, 1]}

    def close(self) -> None:
        pass


class LegacyVectorEnv:
    """An old gym vector env: 4-tuple steps, `done` per lane, one info dict of per-lane lists.

    Every step returns the `done` and `truncated` flags given for it (the last repeats).
    `masked` adds gymnasium's "_TimeLimit.truncated" mask of the lanes the key applies to.
    """

    metadata: dict[str, Any] = {}
    render_mode = None

    def __init__(self, steps: list[tuple[list[bool], Any]], mask: list[bool] | None = None) -> None:
        self.num_envs = 2
        self.single_observation_space = spaces.Discrete(3)
        self.single_action_space = spaces.Discrete(2)
        self.observation_space = self.single_observation_space
        self.action_space = self.single_action_space
        self.steps = steps
        self.mask = mask
        self.i = 0

    def reset(self, seed: Any = None, options: dict[str, Any] | None = None) -> np.ndarray:
        return np.zeros(2, np.int64)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        done, truncated = self.steps[min(self.i, len(self.steps) - 1)]
        self.i += 1
        info: dict[str, Any] = {"TimeLimit.truncated": truncated}
        if self.mask is not None:
            info["_TimeLimit.truncated"] = np.array(self.mask)
        return np.ones(2, np.int64), np.ones(2), np.array(done), info

    def close(self) -> None:
        pass


# -- envs for the vector fast path (tests/integration/test_vector_fastpath*.py) ----------------


class DictImageEnv:
    """A Gymnasium env with a Dict observation (a uint8 image, a position, a Discrete mode).

    Seeded through ``np_random``; episodes end after a random number of
    steps (terminated or truncated), and info carries numpy arrays and
    scalars, so batching, autoreset and info can be compared with
    ``gymnasium.vector.SyncVectorEnv`` bit for bit.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode: str | None = "rgb_array") -> None:
        import gymnasium

        self.render_mode = render_mode
        self.observation_space = gymnasium.spaces.Dict(
            {
                "image": gymnasium.spaces.Box(0, 255, (6, 5, 3), np.uint8),
                "pos": gymnasium.spaces.Box(-10.0, 10.0, (2,), np.float32),
                "mode": gymnasium.spaces.Discrete(4),
            }
        )
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._rng = np.random.default_rng()
        self.t = 0
        self.length = 5

    def _obs(self) -> dict[str, Any]:
        return {
            "image": self._rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
            "pos": self._rng.uniform(-1, 1, 2).astype(np.float32),
            "mode": int(self._rng.integers(0, 4)),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.t = 0
        self.length = int(self._rng.integers(3, 9))
        return self._obs(), {"length": self.length, "start": np.arange(3, dtype=np.int16) + self.length}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.t += 1
        reward = float(np.sum(action)) + self.t
        ended = self.t >= self.length
        terminated = ended and self.length % 2 == 0
        truncated = ended and not terminated
        info: dict[str, Any] = {"t": np.int64(self.t)}
        if self.t % 3 == 0:
            info["third"] = np.float32(self.t / 3)
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        frame = np.zeros((4, 4, 3), dtype=np.uint8)
        frame[..., 0] = self.t
        frame[..., 1] = self.length
        return frame

    def close(self) -> None:
        pass


class SlowLaneEnv(TinyEnv):
    """TinyEnv whose step sleeps ``delay`` seconds after a reset with seed 1000 (one slow lane)."""

    def __init__(self, limit: int = 1000) -> None:
        super().__init__(limit=limit)
        self.delay = 0.0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        self.delay = float((options or {}).get("delay", 0.6)) if seed == 1000 else 0.0
        return super().reset(seed=seed, options=None)

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        if self.delay:
            time.sleep(self.delay)
        return super().step(action)


class BrokenLaneEnv(TinyEnv):
    """TinyEnv whose step raises for action 1."""

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        if int(action) == 1:
            raise ValueError("action 1 breaks this lane")
        return super().step(action)


class KillLaneEnv(TinyEnv):
    """TinyEnv whose step SIGKILLs its own process for action 1 (a vector worker that crashes)."""

    def __init__(self, limit: int = 1000) -> None:
        super().__init__(limit=limit)

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        if int(action) == 1:
            os.kill(os.getpid(), 9)
        return super().step(action)


class QuirkyLaneEnv:
    """A Box(4,) float32 env whose step results vary in kind, for the worker's native lane loop.

    By step count: the observation comes as float32 (contiguous), float64 (cast
    on the way in), a Python list, or a strided float32 view; the reward as a
    float, an int or a numpy float32; the flags as numpy bools; the info empty,
    or holding numpy values every third step; the reset's info empty or not by
    seed parity. Seeded through ``np_random``-like state, so trajectories can be
    compared with ``gymnasium.vector.SyncVectorEnv`` bit for bit.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    render_mode = None

    def __init__(self) -> None:
        import gymnasium

        self.observation_space = gymnasium.spaces.Box(-100.0, 100.0, (4,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(3)
        self._rng = np.random.default_rng()
        self.t = 0
        self.length = 5

    def _obs(self, action: int) -> Any:
        base = self._rng.uniform(-1, 1, 4) + action + self.t
        kind = self.t % 4
        if kind == 1:
            return base  # float64: the vector env casts it into the float32 batch
        if kind == 2:
            return [float(x) for x in base.astype(np.float32)]
        if kind == 3:
            return np.repeat(base.astype(np.float32), 2)[::2]  # not contiguous
        return base.astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.t = 0
        self.length = int(self._rng.integers(2, 9))
        info: dict[str, Any] = {} if (seed or 0) % 2 == 0 else {"length": np.int64(self.length)}
        return self._obs(0), info

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        self.t += 1
        a = int(action)
        rewards: list[Any] = [float(a) / 2, a, np.float32(a + 0.25)]
        ended = self.t >= self.length
        terminated = np.bool_(ended and self.length % 2 == 0)
        truncated = np.bool_(ended and not terminated)
        info: dict[str, Any] = {} if self.t % 3 else {"t": np.int64(self.t), "half": np.float32(self.t / 2)}
        return self._obs(a), rewards[self.t % 3], terminated, truncated, info

    def close(self) -> None:
        pass


class ComboActionEnv:
    """A nested action, a Dict holding a Tuple, echoed into the observation: the workers' action trees.

    The observation is ``[move, force[0], force[1], flag, steps]`` as float32, so a
    lane's observation shows exactly which action its env received.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    render_mode = None

    def __init__(self) -> None:
        import gymnasium

        self.action_space = gymnasium.spaces.Dict(
            {
                "move": gymnasium.spaces.Discrete(3),
                "pair": gymnasium.spaces.Tuple(
                    (gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32), gymnasium.spaces.MultiBinary(1))
                ),
            }
        )
        self.observation_space = gymnasium.spaces.Box(-10.0, 1000.0, (5,), np.float32)
        self.steps = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self.steps = 0
        return np.zeros(5, np.float32), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.steps += 1
        force, flag = action["pair"]
        obs = np.array([action["move"], force[0], force[1], flag[0], self.steps], np.float32)
        return obs, float(action["move"]), False, self.steps >= 4, {}

    def close(self) -> None:
        pass
