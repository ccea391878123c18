"""Step 6 CartPoles in 3 worker processes, overlapping the policy with the envs (send/recv).

Run: python examples/vector_send_recv.py

The server runs each lane group in its own worker process; the client talks to
the workers directly through shared memory. ``send`` returns at once; ``recv``
returns the lanes that are ready first (at least ``min_envs``), with their
``env_ids``, so a slow lane never holds back the others, and a lane not
returned now comes back from a later ``recv``.
"""

from __future__ import annotations

import tempfile

import numpy as np

import rlmesh
import rlmesh.numpy as rnp


def policy(obs: np.ndarray) -> np.ndarray:
    """Push the cart toward the side the pole leans to."""
    return (obs[:, 2] > 0).astype(np.int64)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        address = f"unix://{tmp}/cartpole.sock"
        with rlmesh.EnvServer("CartPole-v1", address, num_envs=6, workers=3).start():
            with rnp.RemoteVectorEnv(address) as env:
                obs, _ = env.reset(seed=0)
                print(f"fast path: {env.fast_path}, {env.num_envs} lanes")
                env.send(policy(obs))  # every lane
                steps = episodes = 0
                while steps < 3000:
                    obs, rewards, terminated, truncated, info, env_ids = env.recv(min_envs=2, timeout=10)
                    steps += len(env_ids)
                    episodes += info["completed_episodes"]
                    env.send(policy(obs), env_ids=env_ids)  # only the lanes that came back
                env.recv(timeout=10)  # collect what is still in flight: nothing is lost
                print(f"{steps} lane-steps, {episodes} episodes finished")
                # The synchronous forms work on the same client.
                env.step_async(np.zeros(6, dtype=np.int64))
                _, rewards, _, _, _ = env.step_wait(timeout=10)
                print("step_async/step_wait rewards:", rewards.tolist())


if __name__ == "__main__":
    main()
