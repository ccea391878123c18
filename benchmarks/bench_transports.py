"""Single-env step rate of a served env, by transport, against the peers, idle and busy, in one run.

Workloads: CartPole-v1 and image envs with 28 KiB, 150 KiB and 4 MiB uint8
observations. Every cell serves the workload in a fresh process and drives it
from another with a NumPy client (writable observations, as Gymnasium's):

* rlmesh over ``shm`` (Unix socket, observations through shared memory),
  ``unix`` (Unix socket, tensors copied inline) and ``tcp`` (loopback, inline);
* gymnasium's ``AsyncVectorEnv`` with one worker process, shared memory on and
  off: the stock way to step an env in another process;
* with ``--peer-python PATH``, the published ``rlmesh`` package (gRPC) in that
  interpreter, over its Unix and TCP transports (``--setup-peer DIR`` makes
  such a virtual environment from PyPI). Its server and client are the files
  ``_peer_server.py`` and ``_peer_client.py``, run by that interpreter.

Every cell is timed by the same loop, ``_harness.step_rates`` (the published
package's client imports it in its own interpreter): ``--rounds`` rounds of
``--seconds`` each, median steps/s. Each cell is measured in every condition
of ``--conditions``: ``idle``, and ``busy`` with one extra process spinning on
a core for the whole measurement (a learner computing while its envs step).

CPU per step: for rlmesh and gymnasium cells, the user+sys CPU time of the
stepping process (the client; AsyncVectorEnv's main process) and of the
serving one (rlmesh's server; AsyncVectorEnv's worker), divided by the steps
taken, env step included. ``--spin on,off`` measures the rlmesh cells with
spinning on and off (``RLMESH_SPIN=0`` for server and client; rows named
``...-nospin``).

Output: one JSON line per cell and condition, then a markdown table with the
idle and busy rates side by side, each rlmesh row's ratio to every peer in
the same condition, and the CPU per step (client + server) per condition.

Run: ``python -m benchmarks.bench_transports [--quick] [--peer-python PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import (  # noqa: E402
    Runner,
    busy_processes,
    deadline,
    markdown_table,
    sigterm_as_exit,
    step_rates_with_cpu,
)
from benchmarks._peer import CARTPOLE, IMAGE, make_env, obs_bytes  # noqa: E402
from rlmesh import _demo  # noqa: E402
from rlmesh._spin import ENV_VAR as ENV_SPIN  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKLOADS = list(_demo.WORKLOADS)
#: Extra spinning processes in each condition.
CONDITIONS = {"idle": 0, "busy": 1}
#: The bound on starting a cell's server and client, on top of its timed rounds.
SETUP_TIMEOUT = 120.0

#: Runs one condition's rounds of a cell: steps/s per round, and the CPU per step
#: in microseconds of the stepping and of the serving process (None: not measured).
Measured = tuple[list[float], float | None, float | None]
Timer = Callable[[], Measured]
#: Spinning on and off (the ``--spin`` choices).
SPIN = {"on": True, "off": False}


def peer_env(workload: str) -> tuple[str, dict[str, Any]]:
    """The ``_peer.make_env`` kind and keyword arguments of a workload."""
    target, kwargs = _demo.WORKLOADS[workload]
    return (CARTPOLE if target == "CartPole-v1" else IMAGE), kwargs


# -- the cells: each yields a Timer for the conditions to call ------------------------------------


@contextlib.contextmanager
def rlmesh_cell(
    workload: str, transport: str, address: str, seconds: float, rounds: int, spin: bool = True
) -> Iterator[Timer]:
    """``rlmesh serve`` in a subprocess, stepped from here with the NumPy client.

    ``spin=False`` sets ``RLMESH_SPIN=0`` for the server and the client.
    """
    from rlmesh.numpy import RemoteEnv

    target, kwargs = _demo.WORKLOADS[workload]
    environ = dict(os.environ)
    if not spin:
        environ[ENV_SPIN] = "0"
    # The idle timeout stops a server that outlives this process (a SIGKILL): nothing else would.
    server, bound = _demo.start_server(
        target, kwargs, address, quiet=True, extra=["--idle-timeout", str(SETUP_TIMEOUT)], env=environ
    )
    try:
        with _environment(environ):  # the client reads RLMESH_SPIN when it connects
            env = RemoteEnv(bound, shared_memory=transport == "shm", connect_timeout_seconds=30)
        try:
            yield lambda: step_rates_with_cpu(env, seconds, rounds, [server.pid])
        finally:
            env.close()
    finally:
        _demo.stop_server(server)


@contextlib.contextmanager
def _environment(environ: dict[str, str]) -> Iterator[None]:
    """``os.environ`` is ``environ`` for the block."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class OneLane:
    """A one-worker AsyncVectorEnv behind the single-env calls ``step_rates`` makes.

    Its lane resets itself (NextStep autoreset), so episode ends are not reported.
    """

    def __init__(self, envs: Any) -> None:
        import numpy as np

        self._envs = envs
        self._actions = np.zeros(1, np.int64)

    def reset(self, *, seed: int | None = None) -> Any:
        return self._envs.reset(seed=seed)

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self._actions[0] = action
        obs, rewards, _, _, info = self._envs.step(self._actions)
        return obs, float(rewards[0]), False, False, info


@contextlib.contextmanager
def gymnasium_cell(workload: str, shared_memory: bool, seconds: float, rounds: int) -> Iterator[Timer]:
    """``gymnasium.vector.AsyncVectorEnv`` with one spawned worker, stepped from here."""
    import gymnasium as gym

    kind, kwargs = peer_env(workload)
    envs = gym.vector.AsyncVectorEnv(
        [functools.partial(make_env, kind, kwargs)], shared_memory=shared_memory, context="spawn"
    )
    try:
        lane = OneLane(envs)
        workers = [process.pid for process in envs.processes if process.pid is not None]
        yield lambda: step_rates_with_cpu(lane, seconds, rounds, workers)
    finally:
        envs.close()


@contextlib.contextmanager
def published_cell(
    python: str, workload: str, address: str, seconds: float, rounds: int, labels: dict[str, Any]
) -> Iterator[Timer]:
    """The published package: ``_peer_server.py`` and, per condition, ``_peer_client.py``, in ``python``.

    Adds the peer's ``rlmesh`` and Python versions to ``labels``.
    """
    kind, kwargs = peer_env(workload)
    with tempfile.TemporaryFile("w+") as server_log:
        server = subprocess.Popen(
            [python, "-I", str(HERE / "_peer_server.py"), "--env", kind, "--kwargs", json.dumps(kwargs)]
            + ["--address", address],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=server_log,
            text=True,
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if not line:
                raise RuntimeError(f"the published package's server did not start: {_tail(server_log)}")
            started = json.loads(line)
            bound = started["address"]
            labels["peer_rlmesh"] = started["rlmesh"]

            def timer() -> Measured:
                client = subprocess.run(
                    [python, "-I", str(HERE / "_peer_client.py"), bound]
                    + ["--seconds", str(seconds), "--rounds", str(rounds)],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=SETUP_TIMEOUT + 2 * seconds * rounds,
                )
                if client.returncode != 0:
                    raise RuntimeError(f"the published package's client failed: {client.stderr[-2000:]}")
                result = json.loads(client.stdout.strip().splitlines()[-1])
                labels["peer_python"] = result["python"]
                return [float(rate) for rate in result["rounds"]], None, None

            yield timer
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            if server.stdout is not None:
                server.stdout.close()


def _tail(log: IO[str]) -> str:
    log.seek(0)
    return log.read()[-2000:]


# -- running and reporting ------------------------------------------------------------------------


def measure_cell(
    runner: Runner,
    workload: str,
    transport: str,
    cell: contextlib.AbstractContextManager[Timer],
    conditions: Sequence[str],
    seconds: float,
    rounds: int,
    labels: dict[str, Any] | None = None,
) -> None:
    """Set up one cell, time it in every condition, print a JSON line per condition."""
    labels = labels if labels is not None else {}
    bound = SETUP_TIMEOUT + len(conditions) * (SETUP_TIMEOUT + 2 * seconds * rounds)
    with deadline(bound, f"{workload} over {transport}"), cell as timer:
        for condition in conditions:
            with busy_processes(CONDITIONS[condition]):
                rates, cpu_client, cpu_server = timer()
            median = statistics.median(rates)
            size = obs_bytes(*peer_env(workload))
            runner.emit(
                {"workload": workload, "transport": transport, "condition": condition},
                {
                    "busy_processes": CONDITIONS[condition],
                    "steps_per_s_median": round(median, 1),
                    "mb_per_s": round(median * size / 1e6, 2),
                    "obs_bytes": size,
                    "rounds": [round(rate, 1) for rate in rates],
                    "seconds": seconds,
                    "timed_s": seconds * len(rates),
                    "cpu_client_us_per_step": None if cpu_client is None else round(cpu_client, 1),
                    "cpu_server_us_per_step": None if cpu_server is None else round(cpu_server, 1),
                    **labels,
                },
            )
            runner.note(f"  {workload:>12} {transport:<24} {condition:<4} {median:>10,.0f} steps/s")


def report(records: Sequence[dict[str, Any]], conditions: Sequence[str]) -> str:
    """The markdown table: steps/s per condition side by side, each rlmesh row's ratios to the peers."""
    rate = {(r["workload"], r["transport"], r["condition"]): r["steps_per_s_median"] for r in records}
    cpu = {
        (r["workload"], r["transport"], r["condition"]): (
            r.get("cpu_client_us_per_step"),
            r.get("cpu_server_us_per_step"),
        )
        for r in records
    }
    cells = list(dict.fromkeys((r["workload"], r["transport"]) for r in records))
    peers = list(dict.fromkeys(t for _, t in cells if not t.startswith("rlmesh-")))
    both = "idle" in conditions and "busy" in conditions
    headers = ["workload", "transport", *(f"steps/s {c}" for c in conditions)]
    if both:
        headers.append("busy/idle")
    headers += [f"x {peer}" for peer in peers]
    headers += [f"CPU us/step {c} (client+server)" for c in conditions]

    def row(workload: str, transport: str, with_ratios: bool) -> list[str]:
        values = [rate.get((workload, transport, c)) for c in conditions]
        out = [workload, transport, *(f"{v:,.0f}" if v else "-" for v in values)]
        if both:
            idle, busy = rate.get((workload, transport, "idle")), rate.get((workload, transport, "busy"))
            out.append(f"{busy / idle:.2f}" if idle and busy else "-")
        for peer in peers:
            if not with_ratios:
                out.append("")
                continue
            ratios = []
            for condition, mine in zip(conditions, values, strict=True):
                theirs = rate.get((workload, peer, condition))
                ratios.append(f"{mine / theirs:.1f}" if mine and theirs else "-")
            out.append(" / ".join(ratios))
        for condition in conditions:
            client, server = cpu.get((workload, transport, condition), (None, None))
            out.append(f"{client + server:.0f} ({client:.0f}+{server:.0f})" if client and server else "-")
        return out

    rows = [row(w, t, True) for w, t in cells if t.startswith("rlmesh-")]
    rows += [row(w, t, False) for w, t in cells if not t.startswith("rlmesh-")]
    return markdown_table(headers, rows)


def setup_peer(directory: str) -> str:
    """Create a virtual environment with the published package from PyPI; return its python."""
    subprocess.run([sys.executable, "-m", "venv", directory], check=True)
    python = str(Path(directory) / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "rlmesh==0.1.0", "numpy", "gymnasium"], check=True)
    return python


def parse_conditions(text: str) -> list[str]:
    """``idle,busy`` -> ["idle", "busy"], in the order given, each known."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONDITIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(CONDITIONS)}; got {text!r}"
        )
    return list(dict.fromkeys(names))


def parse_spin(text: str) -> list[bool]:
    """``on,off`` -> [True, False], in the order given, each known."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in SPIN for name in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of on, off; got {text!r}")
    return [SPIN[name] for name in dict.fromkeys(names)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per cell (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="short rounds, for a smoke test")
    parser.add_argument("--workload", action="append", choices=WORKLOADS, help="repeatable; default all")
    parser.add_argument(
        "--conditions",
        type=parse_conditions,
        default=list(CONDITIONS),
        help="idle, busy (one extra process spinning on a core), or both: idle,busy (the default)",
    )
    parser.add_argument(
        "--spin",
        type=parse_spin,
        default=[True, False],
        help="rlmesh cells with spinning on, off, or both: on,off (the default; off rows end in -nospin)",
    )
    parser.add_argument("--peer-python", default=None, help="a python with the published rlmesh installed")
    parser.add_argument("--setup-peer", default=None, metavar="DIR", help="create that peer venv first")
    parser.add_argument("--no-gymnasium", action="store_true", help="skip the AsyncVectorEnv peer")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON lines (no table)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.3, 1
    workloads: list[str] = args.workload or WORKLOADS
    conditions: list[str] = args.conditions
    seconds, rounds = args.seconds, args.rounds
    peer_python = args.peer_python
    if args.setup_peer:
        peer_python = setup_peer(args.setup_peer)

    runner = Runner(
        "transports",
        args,
        extra_packages=["numpy", "gymnasium", "msgpack", "posix_ipc"],
        short_hint="Run without --quick, or with more --seconds or --rounds.",
    )
    sockets = itertools.count()
    with sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="rlmesh-bench-") as tmp:
        runner.note("rlmesh:")
        for workload in workloads:
            for transport, spin in itertools.product(_demo.TRANSPORTS, args.spin):
                address = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{tmp}/{next(sockets)}.sock"
                cell = rlmesh_cell(workload, transport, address, seconds, rounds, spin)
                name = f"rlmesh-{transport}" + ("" if spin else "-nospin")
                measure_cell(runner, workload, name, cell, conditions, seconds, rounds)
        if not args.no_gymnasium:
            runner.note("gymnasium AsyncVectorEnv (1 worker):")
            for workload in workloads:
                for shared in (True, False):
                    cell = gymnasium_cell(workload, shared, seconds, rounds)
                    name = f"gymnasium-async-{'shm' if shared else 'pipe'}"
                    measure_cell(runner, workload, name, cell, conditions, seconds, rounds)
        if peer_python:
            runner.note(f"published rlmesh ({peer_python}):")
            for workload in workloads:
                for transport in ("unix", "tcp"):
                    address = f"unix://{tmp}/{next(sockets)}.sock" if transport == "unix" else "127.0.0.1:0"
                    labels: dict[str, Any] = {}
                    cell = published_cell(peer_python, workload, address, seconds, rounds, labels)
                    name = f"published-rlmesh-{transport}"
                    measure_cell(runner, workload, name, cell, conditions, seconds, rounds, labels)

    if not args.json_only:
        env = runner.env
        print()
        print(
            f"machine: {env.get('cpu_count')} cores, Python {env.get('python')}, {env.get('platform')}; "
            f"{seconds:g} s x {rounds} rounds per cell, median steps/s; busy: one extra process spinning"
        )
        print(
            f"x PEER: this row's steps/s over the peer's in the same condition, {' / '.join(conditions)}; "
            "above 1 favours rlmesh. CPU: user+sys us per step of the stepping and the serving process "
            "(rlmesh client+server; AsyncVectorEnv main+worker), env step included."
        )
        print()
        print(report(runner.records, conditions))
    runner.finish()


if __name__ == "__main__":
    main()
