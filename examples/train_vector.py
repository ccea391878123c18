"""A CleanRL-style PPO loop on a served vector env, through rlmesh.gymnasium.RemoteVectorEnv.

The script serves ``CartPole-v1`` as one vector endpoint of ``--num-envs`` lanes
in a subprocess (``rlmesh serve CartPole-v1 --num-envs N``; with the vector
fast path, ``--vectorization-mode async``, where this rlmesh has it), opens it
as a ``gymnasium.vector.VectorEnv`` and wraps it in Gymnasium's own vector
wrappers (RecordEpisodeStatistics), then trains a small PyTorch PPO on it.
``--compare-local`` trains the same loop on a local ``SyncVectorEnv``
afterwards and prints wall time and env-steps/s for both.

The loop follows Gymnasium 1.x's NextStep autoreset: the step after an episode
ends only resets its lane, so that transition is masked out of the loss.

    python examples/train_vector.py                       # 150k steps
    python examples/train_vector.py --timesteps 2048      # a quick smoke run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def serve_args(num_envs: int) -> tuple[list[str], str]:
    """``rlmesh serve`` arguments for a vector endpoint: the fast path where the CLI offers it."""
    usage = subprocess.run(
        [sys.executable, "-m", "rlmesh", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    args = ["--num-envs", str(num_envs)]
    if "--vectorization-mode" in usage:
        return [*args, "--vectorization-mode", "async"], "the vector fast path"
    return args, "a served SyncVectorEnv"


def train(envs: Any, timesteps: int, seed: int, label: str) -> tuple[list[float], float, int]:
    """PPO on a Gymnasium vector env; returns the episode returns, the wall time and the steps taken."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(seed)
    n = envs.num_envs
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    n_actions = int(envs.single_action_space.n)

    def mlp(out: int, gain: float) -> nn.Sequential:
        net = nn.Sequential(
            nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, out)
        )
        for layer in net:
            if isinstance(layer, nn.Linear):
                nn.init.orthogonal_(layer.weight, np.sqrt(2) if layer is not net[-1] else gain)
                nn.init.zeros_(layer.bias)
        return net

    actor, critic = mlp(n_actions, 0.01), mlp(1, 1.0)
    optimizer = torch.optim.Adam([*actor.parameters(), *critic.parameters()], lr=2.5e-3, eps=1e-5)
    n_steps, gamma, lam, epochs, minibatches, clip = 32, 0.98, 0.8, 10, 4, 0.2
    iterations = max(timesteps // (n_steps * n), 1)

    obs_buf = torch.zeros((n_steps, n, obs_dim))
    act_buf = torch.zeros((n_steps, n), dtype=torch.long)
    logp_buf, rew_buf, val_buf = (torch.zeros((n_steps, n)) for _ in range(3))
    term_buf, live_buf = torch.zeros((n_steps, n)), torch.zeros((n_steps, n))

    returns: list[float] = []
    obs, _ = envs.reset(seed=seed)
    # Lanes whose episode ended on the previous step: their next step is only a reset.
    resetting = np.zeros(n, dtype=bool)
    start = time.perf_counter()
    steps = 0
    for it in range(1, iterations + 1):
        for g in optimizer.param_groups:
            g["lr"] = 2.5e-3 * (1 - (it - 1) / iterations)
        for t in range(n_steps):
            x = torch.as_tensor(obs, dtype=torch.float32).reshape(n, obs_dim)
            with torch.no_grad():
                dist = torch.distributions.Categorical(logits=actor(x))
                action = dist.sample()
                obs_buf[t], act_buf[t], logp_buf[t] = x, action, dist.log_prob(action)
                val_buf[t] = critic(x).squeeze(-1)
            obs, reward, terminated, truncated, info = envs.step(action.numpy())
            steps += n
            live_buf[t] = torch.as_tensor(~resetting, dtype=torch.float32)
            rew_buf[t] = torch.as_tensor(reward, dtype=torch.float32)
            term_buf[t] = torch.as_tensor(terminated, dtype=torch.float32)
            resetting = np.logical_or(terminated, truncated)
            if "episode" in info:
                returns.extend(float(r) for r in info["episode"]["r"][info["_episode"]])
        with torch.no_grad():
            x = torch.as_tensor(obs, dtype=torch.float32).reshape(n, obs_dim)
            next_value = critic(x).squeeze(-1)
            advantages = torch.zeros((n_steps, n))
            gae = torch.zeros(n)
            for t in reversed(range(n_steps)):
                # The value after step t is that of the observation step t returned:
                # a final observation when the episode ended (bootstrapped unless terminated).
                after = next_value if t == n_steps - 1 else val_buf[t + 1]
                nonterminal = 1.0 - term_buf[t]
                delta = rew_buf[t] + gamma * after * nonterminal - val_buf[t]
                # An episode boundary cuts the chain: the next step is a reset.
                cont = (
                    live_buf[t + 1] if t < n_steps - 1 else torch.as_tensor(~resetting, dtype=torch.float32)
                )
                gae = delta + gamma * lam * nonterminal * cont * gae
                advantages[t] = gae
            targets = advantages + val_buf
        mask = live_buf.reshape(-1) > 0
        b_obs, b_act = obs_buf.reshape(-1, obs_dim)[mask], act_buf.reshape(-1)[mask]
        b_logp, b_adv, b_ret = (
            logp_buf.reshape(-1)[mask],
            advantages.reshape(-1)[mask],
            targets.reshape(-1)[mask],
        )
        size = int(mask.sum())
        for _ in range(epochs):
            for idx in torch.randperm(size).chunk(minibatches):
                dist = torch.distributions.Categorical(logits=actor(b_obs[idx]))
                ratio = (dist.log_prob(b_act[idx]) - b_logp[idx]).exp()
                adv = (b_adv[idx] - b_adv[idx].mean()) / (b_adv[idx].std() + 1e-8)
                policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
                value_loss = 0.5 * (critic(b_obs[idx]).squeeze(-1) - b_ret[idx]).pow(2).mean()
                optimizer.zero_grad()
                (policy_loss + value_loss).backward()
                nn.utils.clip_grad_norm_([*actor.parameters(), *critic.parameters()], 0.5)
                optimizer.step()
        if it % max(iterations // 10, 1) == 0 or it == iterations:
            recent = returns[-20:]
            mean = sum(recent) / len(recent) if recent else float("nan")
            rate = steps / (time.perf_counter() - start)
            print(
                f"  {label} {steps:>7} steps  mean return (last 20) {mean:6.1f}  {rate:7.0f} steps/s",
                flush=True,
            )
    return returns, time.perf_counter() - start, steps


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timesteps", type=int, default=150_000)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-local", action="store_true", help="also train on a local SyncVectorEnv")
    args = parser.parse_args()

    import gymnasium as gym
    import torch

    import rlmesh.gymnasium as rg

    torch.set_num_threads(1)  # a small MLP: one thread beats contended cores
    with tempfile.TemporaryDirectory() as tmp:
        address = f"unix://{Path(tmp) / 'vector.sock'}"
        extra, how = serve_args(args.num_envs)
        server = subprocess.Popen(
            [sys.executable, "-m", "rlmesh", "serve", "CartPole-v1", "--address", address, *extra]
        )
        try:
            envs = gym.wrappers.vector.RecordEpisodeStatistics(
                rg.RemoteVectorEnv(address, connect_timeout_seconds=60)
            )
            try:
                mode = envs.metadata["autoreset_mode"].value
                print(
                    f"training on {envs.num_envs} lanes of CartPole-v1 served by {how} at {address} "
                    f"({envs.unwrapped.client.data_plane}, autoreset {mode})",
                    flush=True,
                )
                returns, wall, steps = train(envs, args.timesteps, args.seed, "remote")
            finally:
                envs.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    last = returns[-20:]
    print(
        f"remote: {steps} steps in {wall:.1f} s, {steps / wall:.0f} env-steps/s, "
        f"mean return of the last {len(last)} episodes {sum(last) / max(len(last), 1):.1f}"
    )
    if args.compare_local:
        local = gym.wrappers.vector.RecordEpisodeStatistics(
            gym.make_vec("CartPole-v1", num_envs=args.num_envs, vectorization_mode="sync")
        )
        try:
            local_returns, local_wall, _ = train(local, args.timesteps, args.seed, "local")
        finally:
            local.close()
        print(
            f"remote {wall:.1f} s ({steps / wall:.0f} env-steps/s) vs local {local_wall:.1f} s "
            f"({steps / local_wall:.0f} env-steps/s): remote/local wall time {wall / local_wall:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
