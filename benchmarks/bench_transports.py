"""Single-env step rate of a served env, by transport, against the peers, in one run.

Workloads: CartPole-v1 and image envs with 28 KiB, 150 KiB and 4 MiB uint8
observations. Every cell serves the workload in a fresh process and drives it
from this one with the NumPy client (writable observations, as Gymnasium's):

* rlmesh over ``shm`` (Unix socket, observations through shared memory),
  ``unix`` (Unix socket, tensors copied inline) and ``tcp`` (loopback, inline);
* gymnasium's ``AsyncVectorEnv`` with one worker process, shared memory on and
  off: the stock way to step an env in another process;
* with ``--peer-python PATH``, the published ``rlmesh`` package (gRPC) in that
  interpreter, over its Unix and TCP transports (``--setup-peer DIR`` makes
  such a virtual environment from PyPI).

Each cell runs ``--rounds`` rounds of ``--seconds`` each and reports the median
steps/s. Output: one JSON line per cell (with the machine's description), then
a markdown table with ratios against the peers.

Run: ``python -m benchmarks.bench_transports [--quick] [--peer-python PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import environment, markdown_table  # noqa: E402
from rlmesh import _demo  # noqa: E402

WORKLOADS = ["CartPole-v1", "28 KiB obs", "150 KiB obs", "4 MiB obs"]

# The published package cannot import our demo env, so the peer gets its own
# copy of the same env (same sizes, same per-step work) as a file.
PEER_ENVS = """
import numpy as np
from gymnasium import spaces

class ImageEnv:
    metadata = {"render_modes": []}
    render_mode = None
    def __init__(self, nbytes=28 * 1024, episode_length=1000):
        width = 64
        height = max(1, nbytes // (width * 4))
        self.observation_space = spaces.Box(0, 255, (height, width, 4), np.uint8)
        self.action_space = spaces.Discrete(2)
        self._frames = [np.zeros((height, width, 4), np.uint8) for _ in range(2)]
        self._t = 0
        self._episode_length = episode_length
    def _frame(self):
        frame = self._frames[self._t & 1]
        frame[0, :8, 0] = self._t & 0xFF
        return frame
    def reset(self, *, seed=None, options=None):
        self._t = 0
        return self._frame(), {}
    def step(self, action):
        self._t += 1
        return self._frame(), 1.0, False, self._t >= self._episode_length, {}
    def close(self):
        pass
"""

PEER_SERVER = """
import json, sys
sys.path.insert(0, sys.argv[3])
import gymnasium as gym
import rlmesh
target, kwargs = sys.argv[1], json.loads(sys.argv[2])
if target == "CartPole-v1":
    env = gym.make("CartPole-v1")
else:
    from peer_envs import ImageEnv
    env = ImageEnv(**kwargs)
server = rlmesh.EnvServer(env, sys.argv[4])
print(server.address, flush=True)
server.serve()
"""

PEER_CLIENT = """
import json, sys, time, statistics
from rlmesh.numpy import RemoteEnv
address, seconds, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
env = RemoteEnv(address, connect_timeout_seconds=60)
env.reset(seed=0)
for _ in range(20):
    if any(env.step(0)[2:4]):
        env.reset()
results = []
for _ in range(rounds):
    steps = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(8):
            _, _, term, trunc, _ = env.step(steps & 1)
            steps += 1
            if term or trunc:
                env.reset()
        now = time.perf_counter()
        if now >= deadline:
            break
    results.append(steps / (now - start))
env.close()
print(json.dumps(results))
"""


def gymnasium_async_cells(workloads: list[str], seconds: float, rounds: int) -> list[dict[str, Any]]:
    """AsyncVectorEnv with one worker, shared memory on and off."""
    import gymnasium as gym
    import numpy as np

    cells = []
    for workload in workloads:
        target, kwargs = _demo.WORKLOADS[workload]
        if target == "CartPole-v1":
            fns = [lambda: gym.make("CartPole-v1")]
        else:
            fns = [lambda kw=kwargs: _gym_image_env(**kw)]
        for shared in (True, False):
            envs = gym.vector.AsyncVectorEnv(fns, shared_memory=shared, context="spawn")
            try:
                per_round = _demo.measure(_OneLane(envs, np), seconds, rounds)
            finally:
                envs.close()
            name = f"gymnasium-async-{'shm' if shared else 'pipe'}"
            cells.append(_cell(workload, name, per_round))
            print(
                f"  {workload:>12} {name:<24} {statistics.median(per_round):>10,.0f} steps/s", file=sys.stderr
            )
    return cells


class _OneLane:
    """A one-worker AsyncVectorEnv behind the single-env calls _demo.measure makes.

    Its lane resets itself (NextStep autoreset), so episode ends are not reported.
    """

    def __init__(self, envs: Any, np: Any) -> None:
        self._envs = envs
        self._actions = np.zeros(1, np.int64)

    def reset(self, seed: int | None = None) -> Any:
        return self._envs.reset(seed=seed)

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self._actions[0] = action
        obs, rewards, _, _, info = self._envs.step(self._actions)
        return obs, float(rewards[0]), False, False, info


def _gym_image_env(**kwargs: Any) -> Any:
    """The demo's image env with Gymnasium spaces, as AsyncVectorEnv needs."""
    from rlmesh.spaces import to_gymnasium_space

    env = _demo.ImageEnv(**kwargs)
    env.observation_space = to_gymnasium_space(env.observation_space)  # type: ignore[assignment]
    env.action_space = to_gymnasium_space(env.action_space)  # type: ignore[assignment]
    return env


def peer_cells(python: str, workloads: list[str], seconds: float, rounds: int) -> list[dict[str, Any]]:
    """The published rlmesh package, run entirely in ``python``."""
    cells = []
    with tempfile.TemporaryDirectory(prefix="rlmesh-peer-") as tmp:
        (Path(tmp) / "peer_envs.py").write_text(PEER_ENVS)
        server_py = Path(tmp) / "server.py"
        server_py.write_text(PEER_SERVER)
        client_py = Path(tmp) / "client.py"
        client_py.write_text(PEER_CLIENT)
        for workload in workloads:
            target, kwargs = _demo.WORKLOADS[workload]
            for transport in ("unix", "tcp"):
                bind = f"unix://{tmp}/peer.sock" if transport == "unix" else "127.0.0.1:0"
                server = subprocess.Popen(
                    [python, str(server_py), target, json.dumps(kwargs), tmp, bind],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                try:
                    assert server.stdout is not None
                    address = server.stdout.readline().strip()
                    if not address:
                        raise RuntimeError(f"the peer server did not start for {workload}")
                    client = subprocess.run(
                        [python, str(client_py), address, str(seconds), str(rounds)],
                        capture_output=True,
                        text=True,
                        timeout=120 + seconds * rounds * 2,
                    )
                    if client.returncode != 0:
                        raise RuntimeError(f"the peer client failed: {client.stderr[-2000:]}")
                    per_round = json.loads(client.stdout.strip().splitlines()[-1])
                finally:
                    server.terminate()
                    try:
                        server.wait(10)
                    except subprocess.TimeoutExpired:
                        server.kill()
                        server.wait()
                    if transport == "unix" and os.path.exists(f"{tmp}/peer.sock"):
                        os.unlink(f"{tmp}/peer.sock")
                name = f"published-rlmesh-{transport}"
                cells.append(_cell(workload, name, per_round))
                print(
                    f"  {workload:>12} {name:<24} {statistics.median(per_round):>10,.0f} steps/s",
                    file=sys.stderr,
                )
    return cells


def _cell(workload: str, transport: str, per_round: list[float]) -> dict[str, Any]:
    target, kwargs = _demo.WORKLOADS[workload]
    obs_bytes = 16 if target == "CartPole-v1" else _image_bytes(kwargs["nbytes"])
    median = statistics.median(per_round)
    return {
        "bench": "transports",
        "workload": workload,
        "transport": transport,
        "steps_per_s_median": round(median, 1),
        "mb_per_s": round(median * obs_bytes / 1e6, 2),
        "obs_bytes": obs_bytes,
        "rounds": [round(r, 1) for r in per_round],
    }


def _image_bytes(nbytes: int) -> int:
    height = max(1, nbytes // 256)
    return height * 64 * 4


def setup_peer(directory: str) -> str:
    """Create a virtual environment with the published package from PyPI; return its python."""
    subprocess.run([sys.executable, "-m", "venv", directory], check=True)
    python = str(Path(directory) / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "rlmesh==0.1.0", "numpy", "gymnasium"], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per cell (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="short rounds, for a smoke test")
    parser.add_argument("--workload", action="append", choices=WORKLOADS, help="repeatable; default all")
    parser.add_argument("--peer-python", default=None, help="a python with the published rlmesh installed")
    parser.add_argument("--setup-peer", default=None, metavar="DIR", help="create that peer venv first")
    parser.add_argument("--no-gymnasium", action="store_true", help="skip the AsyncVectorEnv peer")
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.3, 1
    workloads = args.workload or WORKLOADS
    peer_python = args.peer_python
    if args.setup_peer:
        peer_python = setup_peer(args.setup_peer)

    env_info = environment(["numpy", "gymnasium", "msgpack", "posix_ipc"])
    cells: list[dict[str, Any]] = []
    print("rlmesh:", file=sys.stderr)
    for cell in _demo.run_cells(
        workloads,
        _demo.TRANSPORTS,
        seconds=args.seconds,
        rounds=args.rounds,
        progress=lambda line: print("  " + line, file=sys.stderr),
    ):
        cells.append(_cell(cell.workload, f"rlmesh-{cell.transport}", cell.rounds))
    if not args.no_gymnasium:
        print("gymnasium AsyncVectorEnv (1 worker):", file=sys.stderr)
        cells += gymnasium_async_cells(workloads, args.seconds, args.rounds)
    if peer_python:
        print(f"published rlmesh ({peer_python}):", file=sys.stderr)
        cells += peer_cells(peer_python, workloads, args.seconds, args.rounds)

    for cell in cells:
        print(json.dumps({**cell, "env": env_info}))
    if args.json_only:
        return
    by = {(c["workload"], c["transport"]): c["steps_per_s_median"] for c in cells}
    peers = [t for t in dict.fromkeys(c["transport"] for c in cells) if not t.startswith("rlmesh-")]
    headers = ["workload", "transport", "steps/s", "MB/s"] + [f"x {p}" for p in peers]
    rows = []
    for cell in cells:
        if not cell["transport"].startswith("rlmesh-"):
            continue
        ratios = []
        for peer in peers:
            base = by.get((cell["workload"], peer))
            ratios.append(f"{cell['steps_per_s_median'] / base:.1f}" if base else "-")
        rows.append(
            [
                cell["workload"],
                cell["transport"],
                f"{cell['steps_per_s_median']:,.0f}",
                f"{cell['mb_per_s']:,.1f}",
                *ratios,
            ]
        )
    for cell in cells:
        if not cell["transport"].startswith("rlmesh-"):
            rows.append(
                [
                    cell["workload"],
                    cell["transport"],
                    f"{cell['steps_per_s_median']:,.0f}",
                    f"{cell['mb_per_s']:,.1f}",
                ]
                + [""] * len(peers)
            )
    print()
    print(
        f"machine: {env_info.get('cpu_count')} cores, Python {env_info.get('python')}, "
        f"{env_info.get('platform')}"
    )
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
