"""Serve a Gymnasium environment with rlmesh until Ctrl-C."""

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env-id", default="CartPole-v1", help="a registered Gymnasium id")
    parser.add_argument("--address", default="127.0.0.1:5555", help="unix:///path.sock or host:port")
    parser.add_argument("--num-envs", type=int, default=None, help="serve a vector env of N copies")
    args = parser.parse_args()

    import rlmesh

    # An id (not an env object) gives every client its own env instance.
    server = rlmesh.EnvServer(args.env_id, args.address, num_envs=args.num_envs)
    contract = server.env_contract
    print(f"serving {contract.id} on {server.address}", flush=True)
    print(f"observation_space={contract.observation_space!r}", flush=True)
    print(f"action_space={contract.action_space!r}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()
