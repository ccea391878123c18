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

Sandbox rows (``sandbox-shm``), when a Docker daemon answers (``--no-sandbox``
skips them): CartPole and the 4 MiB workload served by the same env in a
Docker sandbox (``rlmesh.numpy.SandboxEnv``, observations through memfd
shared memory), each with its ratio to the host-served ``rlmesh-shm`` row of
the same run and condition, and a target of at least 0.8x; then the start
times: cold (an image build: its inputs get a throwaway wheel, so the content
hash is new) and warm (the image reused), each until the first observation.

Output: one JSON line per cell and condition (``kind: "row"``), per start
(``"start"``) and per target (``"target"``), then a markdown table with the
idle and busy rates side by side, each rlmesh row's ratio to every peer in
the same condition, the CPU per step (client + server) per condition, and
the sandbox's targets and start times.

Run: ``python -m benchmarks.bench_transports [--quick] [--peer-python PATH] [--no-sandbox]``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _hot_path_targets as hot_path_targets  # noqa: E402
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
#: The JAX client's rows (issue 13): ``rlmesh-shm-jax`` beside the NumPy client's ``rlmesh-shm``
#: on these workloads; "4 KiB obs" is measured for this comparison only (unless asked for).
JAX_WORKLOADS = ("4 KiB obs", "4 MiB obs")
#: Every workload the bench knows: the demo's, and the JAX comparison's small frame.
ALL_WORKLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    **_demo.WORKLOADS,
    "4 KiB obs": ("rlmesh._demo:ImageEnv", {"nbytes": 4 * 1024}),
}
#: The row name of the JAX client's cells.
JAX_ROW = "rlmesh-shm-jax"
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
#: The sandbox rows' transport, and the host row each is compared with.
SANDBOX = _demo.SANDBOX_TRANSPORT
HOST_SHM = "rlmesh-shm"
#: The sandbox rows' target (issue 11): steps/s at least this fraction of the host-served shm row's.
SANDBOX_TARGET = 0.8
#: The bound on one sandbox start, image build included (a build on a slow machine takes minutes).
SANDBOX_START_TIMEOUT = 900.0


def peer_env(workload: str) -> tuple[str, dict[str, Any]]:
    """The ``_peer.make_env`` kind and keyword arguments of a workload."""
    target, kwargs = ALL_WORKLOADS[workload]
    return (CARTPOLE if target == "CartPole-v1" else IMAGE), kwargs


# -- the cells: each yields a Timer for the conditions to call ------------------------------------


@contextlib.contextmanager
def rlmesh_cell(
    workload: str,
    transport: str,
    address: str,
    seconds: float,
    rounds: int,
    spin: bool = True,
    client: str = "numpy",
) -> Iterator[Timer]:
    """``rlmesh serve`` in a subprocess, stepped from here with the NumPy client (or ``client="jax"``).

    ``spin=False`` sets ``RLMESH_SPIN=0`` for the server and the client.
    """
    if client == "jax":
        from rlmesh.jax import RemoteEnv
    else:
        from rlmesh.numpy import RemoteEnv

    target, kwargs = ALL_WORKLOADS[workload]
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


@contextlib.contextmanager
def sandbox_cell(workload: str, seconds: float, rounds: int, labels: dict[str, Any]) -> Iterator[Timer]:
    """The workload's env in a Docker sandbox (``rlmesh.numpy.SandboxEnv``), stepped from here.

    The same target and kwargs as the host rows (``rlmesh._demo:ImageEnv`` is in
    the image's rlmesh), with :func:`rlmesh._demo.sandbox_params`. The CPU of the
    serving side is that of the container's processes. Adds the image, whether
    this start built it, its seconds and the data plane to ``labels``.
    """
    from rlmesh.numpy import SandboxEnv

    target, kwargs = _demo.WORKLOADS[workload]
    started = time.perf_counter()
    env = SandboxEnv(target, connect_timeout_seconds=60, **_demo.sandbox_params(), **kwargs)
    try:
        labels.update(
            image=env.sandbox.image,
            built=env.sandbox.built,
            start_s=round(time.perf_counter() - started, 2),
            data_plane=env.data_plane,
        )
        pids = container_pids(env.container_id)
        yield lambda: step_rates_with_cpu(env, seconds, rounds, pids)
    finally:
        env.close()


def container_pids(container_id: str) -> list[int]:
    """The host pids of a container's processes (``docker top``) that this process can read."""
    from rlmesh.sandbox import _docker

    api = _docker.client()
    try:
        top = api.containers.get(container_id).top()
    finally:
        api.close()
    column = top["Titles"].index("PID")
    pids = [int(process[column]) for process in top["Processes"]]
    return [pid for pid in pids if os.access(f"/proc/{pid}/stat", os.R_OK)]


def throwaway_wheel(directory: Path) -> Path:
    """An empty pure-Python wheel whose metadata holds a random nonce.

    Among a sandbox's ``packages`` it changes the image's content hash (the
    hash covers every wheel's sha256) and nothing else: the start that gets it
    builds an image as a first start does, with the wheelhouse and rlmesh's
    wheel already cached on the host. (Make kwargs would not do: they travel
    at start-up and never cause a rebuild.)
    """
    name, version = "rlmesh_bench_coldstart", "1.0"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            f"Summary: a cold-start nonce for bench_transports: {secrets.token_hex(16)}\n"
        ),
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: bench_transports\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def sandbox_start(packages: list[str]) -> tuple[float, str, bool]:
    """Seconds from ``SandboxEnv("CartPole-v1", ...)`` to its first observation; its image; whether built.

    The container is stopped and removed again (not timed).
    """
    from rlmesh.numpy import SandboxEnv

    started = time.perf_counter()
    env = SandboxEnv("CartPole-v1", connect_timeout_seconds=60, packages=packages)
    try:
        env.reset(seed=0)
        seconds = time.perf_counter() - started
        return seconds, env.sandbox.image, env.sandbox.built
    finally:
        env.close()


def measure_starts(runner: Runner, warm_starts: int, tmp: Path) -> None:
    """The cold start (a fresh content hash: an image build) and ``warm_starts`` warm ones; a JSON line each.

    The cold start's image is removed afterwards. Warm starts run the sandbox
    rows' image (built by then, by their first start).
    """
    from rlmesh.sandbox import _docker

    packages = _demo.sandbox_params()["packages"]
    labels = {"kind": "start", "workload": "CartPole-v1", "transport": SANDBOX}
    with deadline(SANDBOX_START_TIMEOUT, "a cold sandbox start"):
        seconds, image, built = sandbox_start([*packages, str(throwaway_wheel(tmp))])
    try:
        runner.emit(
            {**labels, "start": "cold"}, {"seconds": round(seconds, 2), "image": image, "built": built}
        )
        runner.note(f"  sandbox cold start (image build): {seconds:.1f}s")
    finally:
        api = _docker.client()
        try:
            api.images.remove(image, force=True)  # a throwaway hash: nothing else will run it
        finally:
            api.close()
    for i in range(warm_starts):
        with deadline(SANDBOX_START_TIMEOUT, "a warm sandbox start"):
            seconds, image, built = sandbox_start(packages)
        runner.emit(
            {**labels, "start": "warm"},
            {"seconds": round(seconds, 2), "image": image, "built": built, "index": i},
        )
        runner.note(f"  sandbox warm start{' (it built the image)' if built else ''}: {seconds:.1f}s")


def evaluate_targets(
    records: Sequence[dict[str, Any]], conditions: Sequence[str]
) -> list[tuple[str, str, float | None, str]]:
    """Each sandbox row's target: ``(workload, condition, sandbox / host-served shm, verdict)``."""
    rate = _rates(records)
    out: list[tuple[str, str, float | None, str]] = []
    sandboxed = (r["workload"] for r in records if r.get("kind") == "row" and r["transport"] == SANDBOX)
    for workload in dict.fromkeys(sandboxed):
        for condition in conditions:
            mine, host = rate.get((workload, SANDBOX, condition)), rate.get((workload, HOST_SHM, condition))
            if not mine:
                out.append((workload, condition, None, "not measured"))
            elif not host:
                out.append((workload, condition, None, f"n/a (no {HOST_SHM} row: --spin off only?)"))
            else:
                ratio = mine / host
                out.append((workload, condition, ratio, "pass" if ratio >= SANDBOX_TARGET else "FAIL"))
    return out


def target_table(evaluated: Sequence[tuple[str, str, float | None, str]]) -> str:
    """The sandbox targets: measured ratio, required ratio, verdict."""
    rows = [
        [
            workload,
            SANDBOX,
            condition,
            HOST_SHM,
            f"{ratio:.2f}x" if ratio is not None else "-",
            f">= {SANDBOX_TARGET:g}x",
            verdict,
        ]
        for workload, condition, ratio, verdict in evaluated
    ]
    return markdown_table(
        ["workload", "transport", "condition", "against", "ratio", "required", "result"], rows
    )


def start_table(records: Sequence[dict[str, Any]]) -> str:
    """The sandbox start times: cold (image build) and warm (median of the warm starts)."""
    starts = [r for r in records if r.get("kind") == "start"]
    rows = []
    for kind, what in (("cold", "image built (a new content hash)"), ("warm", "image reused")):
        seconds = [r["seconds"] for r in starts if r["start"] == kind]
        if seconds:
            built = any(r["built"] for r in starts if r["start"] == kind)
            note = what if (kind == "cold") == built else f"{what}? built={built}"
            rows.append([kind, f"{statistics.median(seconds):.2f}", len(seconds), note])
    return markdown_table(["start", "seconds to first obs (median)", "starts", "what"], rows)


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
    setup_timeout: float = SETUP_TIMEOUT,
) -> None:
    """Set up one cell (within ``setup_timeout``), time it in every condition; a JSON line per condition."""
    labels = labels if labels is not None else {}
    bound = setup_timeout + len(conditions) * (SETUP_TIMEOUT + 2 * seconds * rounds)
    with deadline(bound, f"{workload} over {transport}"), cell as timer:
        for condition in conditions:
            with busy_processes(CONDITIONS[condition]):
                rates, cpu_client, cpu_server = timer()
            median = statistics.median(rates)
            size = obs_bytes(*peer_env(workload))
            runner.emit(
                {"workload": workload, "transport": transport, "condition": condition},
                {
                    "kind": "row",
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


def _rates(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], float]:
    return {
        (r["workload"], r["transport"], r["condition"]): r["steps_per_s_median"]
        for r in records
        if r.get("kind") == "row"
    }


def _ours(transport: str) -> bool:
    return transport.startswith("rlmesh-") or transport == SANDBOX


def report(records: Sequence[dict[str, Any]], conditions: Sequence[str]) -> str:
    """The markdown table: steps/s per condition side by side, each rlmesh row's ratios to the peers.

    Sandbox rows get one more ratio, to the host-served ``rlmesh-shm`` row.
    """
    records = [r for r in records if r.get("kind") == "row"]
    rate = _rates(records)
    cpu = {
        (r["workload"], r["transport"], r["condition"]): (
            r.get("cpu_client_us_per_step"),
            r.get("cpu_server_us_per_step"),
        )
        for r in records
    }
    cells = list(dict.fromkeys((r["workload"], r["transport"]) for r in records))
    peers = list(dict.fromkeys(t for _, t in cells if not _ours(t)))
    sandboxed = any(t == SANDBOX for _, t in cells)
    both = "idle" in conditions and "busy" in conditions
    headers = ["workload", "transport", *(f"steps/s {c}" for c in conditions)]
    if both:
        headers.append("busy/idle")
    headers += [f"x {peer}" for peer in peers]
    if sandboxed:
        headers.append(f"x {HOST_SHM} (host-served)")
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
        if sandboxed:
            host = [rate.get((workload, HOST_SHM, c)) for c in conditions]
            out.append(
                " / ".join(f"{v / h:.2f}" if v and h else "-" for v, h in zip(values, host, strict=True))
                if transport == SANDBOX
                else ""
            )
        for condition in conditions:
            client, server = cpu.get((workload, transport, condition), (None, None))
            out.append(f"{client + server:.0f} ({client:.0f}+{server:.0f})" if client and server else "-")
        return out

    rows = [row(w, t, True) for w, t in cells if _ours(t)]
    rows += [row(w, t, False) for w, t in cells if not _ours(t)]
    return markdown_table(headers, rows)


def run_sandbox(
    runner: Runner,
    workloads: Sequence[str],
    conditions: Sequence[str],
    seconds: float,
    rounds: int,
    quick: bool,
    tmp: Path,
) -> str | None:
    """The sandbox rows, then the start times; None, or one line saying why they stopped.

    A sandbox that cannot start (its build failed, its base image cannot be
    pulled) ends the sandbox part only: the rest of the run still reports.
    """
    from rlmesh.errors import SandboxError

    runner.note("rlmesh in a Docker sandbox (SandboxEnv):")
    try:
        for workload in (w for w in workloads if w in _demo.SANDBOX_WORKLOADS):
            facts: dict[str, Any] = {}
            cell = sandbox_cell(workload, seconds, rounds, facts)
            measure_cell(
                runner, workload, SANDBOX, cell, conditions, seconds, rounds, facts, SANDBOX_START_TIMEOUT
            )
        measure_starts(runner, 1 if quick else 3, tmp)
    except SandboxError as exc:
        runner.note(f"the sandbox failed: {exc}")
        return f"sandbox rows failed: {str(exc).splitlines()[0]}"
    return None


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
    parser.add_argument(
        "--workload",
        action="append",
        choices=list(ALL_WORKLOADS),
        help=f"repeatable; default all but {JAX_WORKLOADS[0]!r} (measured for the JAX rows only)",
    )
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
    parser.add_argument(
        "--no-sandbox", action="store_true", help="skip the Docker sandbox rows and start times"
    )
    parser.add_argument(
        "--no-jax", action="store_true", help=f"skip the JAX client's rows ({JAX_ROW}, needs jax)"
    )
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
        jax_workloads = [w for w in JAX_WORKLOADS if args.workload is None or w in args.workload]
        if jax_workloads and not args.no_jax:
            if importlib.util.find_spec("jax") is None:
                runner.note(f"{JAX_ROW} rows skipped: jax is not installed (pip install 'rlmesh[jax]')")
            else:
                runner.note("rlmesh, the JAX client against the NumPy client:")
                for workload in jax_workloads:
                    clients = ["jax"] if workload in workloads else ["numpy", "jax"]
                    for client in clients:
                        cell = rlmesh_cell(
                            workload,
                            "shm",
                            f"unix://{tmp}/{next(sockets)}.sock",
                            seconds,
                            rounds,
                            True,
                            client,
                        )
                        name = JAX_ROW if client == "jax" else "rlmesh-shm"
                        measure_cell(runner, workload, name, cell, conditions, seconds, rounds)
                if "4 KiB obs" in jax_workloads:
                    floor = hot_path_targets.jax_array_floor(4096, rounds=rounds)
                    if floor is not None:
                        runner.emit(
                            {"kind": "floor", "workload": "4 KiB obs", "transport": JAX_ROW},
                            {name: round(value, 3) for name, value in floor.items()},
                        )
        if not args.no_gymnasium:
            runner.note("gymnasium AsyncVectorEnv (1 worker):")
            for workload in workloads:
                for shared in (True, False):
                    cell = gymnasium_cell(workload, shared, seconds, rounds)
                    name = f"gymnasium-async-{'shm' if shared else 'pipe'}"
                    measure_cell(runner, workload, name, cell, conditions, seconds, rounds)
        sandbox_skipped = sandbox_failed = None
        if args.no_sandbox:
            sandbox_skipped = "sandbox rows skipped: --no-sandbox"
        elif (why := _demo.docker_daemon()) is not None:
            sandbox_skipped = "sandbox rows skipped: no Docker daemon"
            runner.note(f"{sandbox_skipped} ({why})")
        else:
            sandbox_failed = run_sandbox(
                runner, workloads, conditions, seconds, rounds, args.quick, Path(tmp)
            )
        if peer_python:
            runner.note(f"published rlmesh ({peer_python}):")
            for workload in workloads:
                for transport in ("unix", "tcp"):
                    address = f"unix://{tmp}/{next(sockets)}.sock" if transport == "unix" else "127.0.0.1:0"
                    labels: dict[str, Any] = {}
                    cell = published_cell(peer_python, workload, address, seconds, rounds, labels)
                    name = f"published-rlmesh-{transport}"
                    measure_cell(runner, workload, name, cell, conditions, seconds, rounds, labels)

    hot_path = hot_path_targets.evaluate(runner.records)
    for target, ratio, verdict in hot_path:
        if ratio is None:
            continue  # its rows were not asked for: the table says "not measured"
        runner.emit(
            {
                "kind": "target",
                "workload": target.workload,
                "transport": target.mine,
                "condition": target.condition,
            },
            {
                "target": target.name,
                "against": target.theirs,
                "measure": "cpu_us_per_step" if target.cpu else "steps_per_s",
                "ratio": round(ratio, 3),
                "required": round(target.bound, 3),
                "result": verdict,
            },
        )
    evaluated = evaluate_targets(runner.records, conditions)
    for workload, condition, ratio, verdict in evaluated:
        runner.emit(
            {"kind": "target", "workload": workload, "transport": SANDBOX, "condition": condition},
            {
                "against": HOST_SHM,
                "ratio": round(ratio, 3) if ratio is not None else None,
                "required": SANDBOX_TARGET,
                "result": verdict,
            },
        )
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
        print()
        print("Hot-path targets (issue 13), ratios within this run:")
        print()
        print(hot_path_targets.table(hot_path))
        floors = [r for r in runner.records if r.get("kind") == "floor"]
        if floors:
            ceiling = hot_path_targets.jax_ceiling(runner.records, floors[-1])
            floor = floors[-1]
            print()
            print(
                f"JAX floor, in this process: a 4 KiB observation becomes a jax.Array and is freed in "
                f"{floor['jax_importer_us']:.1f} us by rlmesh's importer (jnp.asarray: "
                f"{floor['jax_asarray_us']:.1f} us; a NumPy array: {floor['numpy_us']:.2f} us)"
                + (
                    f"; against the NumPy client's {ceiling[0]:.1f} us a step, no JAX client can pass "
                    f"{ceiling[1]:.2f}x of its steps/s"
                    if ceiling is not None
                    else ""
                )
                + "."
            )
        if evaluated:
            print()
            print(
                f"Sandbox targets (issue 11): {SANDBOX} steps/s over the host-served {HOST_SHM} row's, "
                "in this run:"
            )
            print()
            print(target_table(evaluated))
        if any(r.get("kind") == "start" for r in runner.records):
            print()
            print("Sandbox start times (CartPole-v1, until the first observation):")
            print()
            print(start_table(runner.records))
        if sandbox_skipped is not None and not args.no_sandbox:
            print()
            print(sandbox_skipped)
        if sandbox_failed is not None:
            print()
            print(sandbox_failed)
    runner.finish()
    if sandbox_failed is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
