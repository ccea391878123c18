"""Stable-Baselines3 trains through rlmesh.gymnasium, and learns exactly what it learns locally.

CartPole is served by ``rlmesh serve`` in another process (a Unix socket, shared
memory). PPO is trained for a few thousand steps on the remote face, and again,
with the same seeds, on a local CartPole: the remote trajectories are bit for
bit the local ones, so the two trained policies must have identical weights.
This needs torch and stable-baselines3 (the ``train`` extra); CI installs them
and sets RLMESH_REQUIRE_SB3=1, under which a missing one fails the test.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

import rlmesh.gymnasium as rg
from tests.conftest import REQUIRE_TRAIN, import_or_skip, serve_subprocess

pytestmark = pytest.mark.timeout(180)

STEPS = 2048


def train(make_env: Any, sb3: Any, torch: Any) -> tuple[Any, Any]:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger

    vec = make_vec_env(make_env, n_envs=2, seed=0)
    try:
        model = sb3.PPO("MlpPolicy", vec, n_steps=256, batch_size=128, n_epochs=2, seed=0, device="cpu")
        # No outputs: SB3's default logger makes a directory under /tmp on every learn().
        model.set_logger(Logger(folder=None, output_formats=[]))
        model.learn(total_timesteps=STEPS)
        weights = [p.detach().clone() for p in model.policy.parameters()]
        return model, weights
    finally:
        vec.close()


def test_ppo_on_the_remote_face_learns_what_it_learns_locally(tmp_path: Path) -> None:
    sb3 = import_or_skip("stable_baselines3")
    torch = import_or_skip("torch")
    from stable_baselines3.common.env_checker import check_env

    proc, address = serve_subprocess("CartPole-v1", f"unix://{tmp_path}/cartpole.sock")
    try:
        probe = rg.RemoteEnv(address)
        assert probe.client.data_plane == "shm"
        check_env(probe, warn=False)
        probe.close()

        torch.set_num_threads(1)  # one thread: the same float sums in both runs
        remote_model, remote = train(lambda: rg.RemoteEnv(address), sb3, torch)
        _, local = train(lambda: gym.make("CartPole-v1"), sb3, torch)

        assert remote_model.num_timesteps >= STEPS
        episodes = list(remote_model.ep_info_buffer)
        assert len(episodes) > 10  # Monitor saw whole episodes end through the remote face
        assert len(remote) == len(local) > 0
        for have, want in zip(remote, local, strict=True):
            assert torch.equal(have, want)
        # And training moved the weights away from their seeded initialisation.
        fresh = sb3.PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu")
        initial = [p.detach() for p in fresh.policy.parameters()]
        assert not all(torch.equal(a, b) for a, b in zip(remote, initial, strict=True))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_a_missing_training_library_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_TRAIN, raising=False)
    with pytest.raises(pytest.skip.Exception):
        import_or_skip("rlmesh_test_no_such_module")
    monkeypatch.setenv(REQUIRE_TRAIN, "1")
    with pytest.raises(pytest.fail.Exception, match="RLMESH_REQUIRE_SB3=1"):
        import_or_skip("rlmesh_test_no_such_module")
