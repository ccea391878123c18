"""Serve a small custom env, written with rlmesh.spaces only (no Gymnasium, no numpy)."""

import argparse

from rlmesh import spaces


class CounterEnv:
    """Counts up by the action (0, 1 or 2) and ends at `limit`."""

    metadata = {"render_modes": []}
    render_mode = None

    def __init__(self, limit: int = 10) -> None:
        self.observation_space = spaces.Discrete(limit + 3)
        self.action_space = spaces.Discrete(3)
        self.limit = limit
        self.count = 0

    def reset(self, *, seed=None, options=None):
        self.count = 0
        return self.count, {"seed": seed}

    def step(self, action):
        self.count += int(action)
        done = self.count >= self.limit
        return self.count, float(action), done, False, {"count": self.count}

    def close(self):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:5556", help="unix:///path.sock or host:port")
    parser.add_argument("--limit", type=int, default=10)
    args = parser.parse_args()

    import rlmesh

    server = rlmesh.EnvServer(lambda: CounterEnv(args.limit), args.address)
    print(f"serving CounterEnv on {server.address}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()
