"""The same env and seeds through every transport give the same trajectory as a local env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import rlmesh.numpy as rnp
from tests.conftest import TRANSPORTS

pytestmark = pytest.mark.timeout(120)


def rollout(env, seeds: list[int], steps: int) -> list[tuple]:
    out = []
    rng = np.random.default_rng(0)
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        out.append(("reset", obs.tobytes()))
        for _ in range(steps):
            action = int(rng.integers(0, 2))
            obs, reward, terminated, truncated, _ = env.step(action)
            out.append((obs.tobytes(), float(reward), bool(terminated), bool(truncated)))
            if terminated or truncated:
                break
    return out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cartpole_matches_a_local_env_bit_for_bit(serve, transport: str) -> None:
    seeds = [0, 1, 7, 42, 12345]
    local = gym.make("CartPole-v1")
    expected = rollout(local, seeds, 500)
    local.close()
    served = serve("CartPole-v1", transport)
    remote = served.client(rnp.RemoteEnv)
    assert remote.data_plane == ("shm" if served.shm else "inline")
    assert rollout(remote, seeds, 500) == expected
