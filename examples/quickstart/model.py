"""Run a small policy against a served environment for a few seeded episodes."""

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:5555", help="the endpoint to evaluate on")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--backend", choices=["numpy", "jax"], default="numpy")
    args = parser.parse_args()

    if args.backend == "jax":
        import jax.numpy as jnp

        from rlmesh.jax import Model

        def policy(obs):
            # Push the cart towards the side the pole leans to (CartPole's observation layout).
            return (obs[2] + 0.5 * obs[3] > 0).astype(jnp.int32)
    else:
        from rlmesh.numpy import Model

        def policy(obs):
            return int(obs[2] + 0.5 * obs[3] > 0)

    result = Model(policy).run(args.address, seeds=args.seeds)
    for episode in result.episodes:
        print(f"seed={episode.seed} steps={episode.steps} return={episode.reward:.1f}", flush=True)
    print(result, flush=True)


if __name__ == "__main__":
    main()
