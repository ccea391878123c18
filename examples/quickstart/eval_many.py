"""Evaluate several endpoints from one process, one episode each."""

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("addresses", nargs="+", help="endpoints to drive")
    parser.add_argument("--max-steps", type=int, default=500)
    args = parser.parse_args()

    from rlmesh.numpy import RemoteEnv

    for address in args.addresses:
        with RemoteEnv(address, connect_timeout_seconds=30) as env:
            env.action_space.seed(0)
            env.reset(seed=0)
            total, steps = 0.0, 0
            while steps < args.max_steps:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total += reward
                steps += 1
                if terminated or truncated:
                    break
            print(f"{env.env_contract.id} at {address}: {steps} steps, return {total:.1f}", flush=True)


if __name__ == "__main__":
    main()
