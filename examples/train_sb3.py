"""Train Stable-Baselines3 PPO on CartPole served in another process, through rlmesh.gymnasium.

The script starts ``rlmesh serve CartPole-v1`` on a Unix socket in a subprocess
(or uses ``--address``), opens eight remote envs over shared memory (the server
gives each connection its own CartPole) and trains PPO on them as on any
Gymnasium env: SB3 sees ``rlmesh.gymnasium.RemoteEnv``, a ``gymnasium.Env``.
It prints progress, evaluates the trained policy on a remote env, writes a
learning curve PNG, and reports wall time and env-steps/s. ``--compare-local``
runs the same training on local envs afterwards and prints both.

Needs the training extra: ``pip install "rlmesh[train]"`` (a CPU build of torch
first on a machine without a GPU; see the README).

    python examples/train_sb3.py                      # 100k steps, mean eval reward >= 475
    python examples/train_sb3.py --timesteps 2000     # a quick smoke run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

N_ENVS = 8


def start_server(address: str) -> subprocess.Popen[bytes]:
    """``rlmesh serve CartPole-v1`` in a subprocess; clients wait for it with connect_timeout_seconds."""
    return subprocess.Popen([sys.executable, "-m", "rlmesh", "serve", "CartPole-v1", "--address", address])


def make_model(vec_env: Any, seed: int) -> Any:
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger

    # RL Zoo's tuned PPO for CartPole-v1: solves it in about 100k steps.
    model = PPO(
        "MlpPolicy",
        vec_env,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=lambda progress: 1e-3 * progress,
        clip_range=lambda progress: 0.2 * progress,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    # A logger with no outputs: SB3's default one makes a directory under /tmp on every learn().
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def progress_callback(curve: list[tuple[int, float]], every: int) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):  # type: ignore[misc]
        """Record each finished episode's return; print a progress line every ``every`` steps."""

        def __init__(self) -> None:
            super().__init__()
            self.start = time.perf_counter()
            self.next_print = every

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    curve.append((self.num_timesteps, float(info["episode"]["r"])))
            if self.num_timesteps >= self.next_print:
                self.next_print += every
                recent = [r for _, r in curve[-20:]]
                mean = sum(recent) / len(recent) if recent else float("nan")
                rate = self.num_timesteps / (time.perf_counter() - self.start)
                line = f"  {self.num_timesteps:>7} steps  mean return (last 20) {mean:6.1f}"
                print(f"{line}  {rate:7.0f} steps/s", flush=True)
            return True

    return Progress()


def train(make_env: Any, timesteps: int, seed: int, label: str) -> tuple[Any, list[tuple[int, float]], float]:
    """Train PPO on N_ENVS envs from ``make_env``; return the model, the learning curve and the wall time."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    vec_env = DummyVecEnv([lambda: Monitor(make_env())] * N_ENVS)
    vec_env.seed(seed)
    curve: list[tuple[int, float]] = []
    try:
        model = make_model(vec_env, seed)
        print(f"training PPO on {N_ENVS} {label} CartPole envs for {timesteps} steps", flush=True)
        start = time.perf_counter()
        model.learn(total_timesteps=timesteps, callback=progress_callback(curve, max(timesteps // 10, 1)))
        wall = time.perf_counter() - start
    finally:
        vec_env.close()
    print(
        f"{label}: {model.num_timesteps} steps in {wall:.1f} s, {model.num_timesteps / wall:.0f} env-steps/s"
    )
    return model, curve, wall


def plot(curves: dict[str, list[tuple[int, float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, curve), style in zip(curves.items(), ("-", "--"), strict=False):
        if curve:
            steps, returns = zip(*curve, strict=True)
            ax.plot(steps, returns, ".", alpha=0.25, label=f"{label} episodes")
            window = 20
            smooth = [
                sum(returns[max(0, i - window) : i + 1]) / (i + 1 - max(0, i - window))
                for i in range(len(returns))
            ]
            # Dashed over solid: with the same seeds the two runs are the same run.
            ax.plot(steps, smooth, style, label=f"{label} (mean of 20)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title("PPO on CartPole-v1 served through rlmesh.gymnasium")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"learning curve written to {path}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument(
        "--address", default=None, help="a served CartPole (default: serve one in a subprocess)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument(
        "--target", type=float, default=None, help="fail unless the mean eval reward reaches it"
    )
    parser.add_argument("--plot", default="train_sb3.png", help="the learning curve PNG ('' for none)")
    parser.add_argument("--compare-local", action="store_true", help="also train on local envs and compare")
    args = parser.parse_args()

    import gymnasium as gym
    import torch
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    import rlmesh.gymnasium as rg

    # A 64x64 MLP trains faster on one thread than on contended cores.
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        server = None
        address = args.address
        if address is None:
            address = f"unix://{Path(tmp) / 'cartpole.sock'}"
            server = start_server(address)
        try:
            probe = rg.RemoteEnv(address, connect_timeout_seconds=60)
            print(f"serving {probe.env_contract.id} at {address} over {probe.client.data_plane}", flush=True)
            probe.close()
            model, curve, wall = train(lambda: rg.RemoteEnv(address), args.timesteps, args.seed, "remote")
            with Monitor(rg.RemoteEnv(address)) as eval_env:
                mean, std = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes)
            print(f"mean evaluation reward over {args.eval_episodes} episodes: {mean:.1f} +/- {std:.1f}")
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)

    curves = {"remote": curve}
    if args.compare_local:
        local_model, curves["local"], local_wall = train(
            lambda: gym.make("CartPole-v1"), args.timesteps, args.seed, "local"
        )
        with Monitor(gym.make("CartPole-v1")) as local_eval:
            local_mean, _ = evaluate_policy(local_model, local_eval, n_eval_episodes=args.eval_episodes)
        print(f"local mean evaluation reward: {local_mean:.1f}")
        steps = model.num_timesteps
        print(
            f"remote {wall:.1f} s ({steps / wall:.0f} env-steps/s) vs local {local_wall:.1f} s "
            f"({steps / local_wall:.0f} env-steps/s): remote/local wall time {wall / local_wall:.2f}"
        )
    if args.plot:
        plot(curves, args.plot)
    if args.target is not None and mean < args.target:
        print(f"FAILED: mean evaluation reward {mean:.1f} < {args.target}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
