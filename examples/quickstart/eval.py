"""Step one served environment with sampled actions and print the episode's return."""

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:5555", help="the endpoint to drive")
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inline", action="store_true", help="copy tensors through the socket")
    args = parser.parse_args()

    from rlmesh.numpy import RemoteEnv

    with RemoteEnv(args.address, connect_timeout_seconds=30, shared_memory=not args.inline) as env:
        print(f"connected to {env.address} ({env.data_plane})", flush=True)
        env.action_space.seed(args.seed)
        obs, info = env.reset(seed=args.seed)
        total = 0.0
        for step in range(1, args.max_steps + 1):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            total += reward
            if terminated or truncated:
                print(f"episode ended after {step} steps, return {total:.1f}", flush=True)
                break
        else:
            print(f"stopped after {args.max_steps} steps, return {total:.1f}", flush=True)


if __name__ == "__main__":
    main()
