"""The demo's envs and the measurement engine shared by ``rlmesh demo`` and ``rlmesh bench``.

A *cell* serves one workload in a fresh ``rlmesh serve`` subprocess and drives
it from this process for a fixed time through one transport:

* ``shm``: a Unix socket, observations through shared memory;
* ``unix``: a Unix socket, tensors copied inline (``shared_memory=False``);
* ``tcp``: TCP on loopback, tensors copied inline (the fallback path).

The demo's *vector rows* (:func:`run_vector_cells`) step 8 CartPoles as one
batch: served by ``rlmesh serve --num-envs 8`` and driven with
``rlmesh.numpy.RemoteVectorEnv``, against gymnasium's ``AsyncVectorEnv`` in
this process. :func:`vector_rates` is their timing loop, and also
``benchmarks/bench_vector.py``'s.

The *sandbox rows* (``benchmarks/bench_transports.py``'s ``sandbox-shm``, and
the demo's when its image is already built) run the same workloads in a
Docker sandbox: :func:`sandbox_params` are their inputs (those of
``tests/integration/test_sandbox.py``, so both share one image),
:func:`docker_daemon` says whether a daemon answers and
:func:`sandbox_image_ready` whether their image is built (without building
or downloading anything).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "TRANSPORTS",
    "VECTOR_NUM_ENVS",
    "WORKLOADS",
    "Cell",
    "ImageEnv",
    "measure",
    "run_cells",
    "run_vector_cells",
    "docker_daemon",
    "demo_sandbox_cells",
    "run_sandbox_cells",
    "sandbox_image_ready",
    "sandbox_params",
    "start_server",
    "vector_rates",
]

#: Observation sizes of the demo's image workloads.
WORKLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "CartPole-v1": ("CartPole-v1", {}),
    "28 KiB obs": ("rlmesh._demo:ImageEnv", {"nbytes": 28 * 1024}),
    "150 KiB obs": ("rlmesh._demo:ImageEnv", {"nbytes": 150 * 1024}),
    "4 MiB obs": ("rlmesh._demo:ImageEnv", {"nbytes": 4 * 1024 * 1024}),
}

TRANSPORTS = ("shm", "unix", "tcp")

#: The workloads of the sandbox rows (issue 11's: CartPole and 4 MiB observations).
SANDBOX_WORKLOADS = ("CartPole-v1", "4 MiB obs")
#: The transport name of a sandbox row: the env in a container, observations through shared memory.
SANDBOX_TRANSPORT = "sandbox-shm"

#: Lanes of the demo's vector rows.
VECTOR_NUM_ENVS = 8
#: The demo's vector workload, as its cells name it.
VECTOR_WORKLOAD = f"{VECTOR_NUM_ENVS}x CartPole-v1"
#: The peer every vector row is compared with.
VECTOR_PEER = "gymnasium AsyncVectorEnv"


class ImageEnv:
    """An env whose observation is a uint8 image of about ``nbytes`` bytes.

    Each step writes the step count into the first row of a new frame (two
    frames alternate), so every observation differs from the last and the
    env's own work stays small next to moving the frame.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    render_mode = None

    def __init__(self, nbytes: int = 28 * 1024, episode_length: int = 1000) -> None:
        import numpy as np

        from . import spaces

        width = 64
        height = max(1, nbytes // (width * 4))
        self.observation_space = spaces.Box(0, 255, (height, width, 4), "uint8")
        self.action_space = spaces.Discrete(2)
        self._frames = [np.zeros((height, width, 4), np.uint8) for _ in range(2)]
        self._t = 0
        self._episode_length = episode_length

    def _frame(self) -> Any:
        frame = self._frames[self._t & 1]
        frame[0, :8, 0] = self._t & 0xFF
        return frame

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start an episode."""
        self._t = 0
        return self._frame(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Advance one step."""
        self._t += 1
        return self._frame(), 1.0, False, self._t >= self._episode_length, {}

    def close(self) -> None:
        """Nothing to release."""


class Cell:
    """One measurement's result."""

    def __init__(
        self, workload: str, transport: str, steps_per_s: float, obs_bytes: int, rounds: list[float]
    ) -> None:
        self.workload = workload
        self.transport = transport
        self.steps_per_s = steps_per_s
        self.obs_bytes = obs_bytes
        self.rounds = rounds

    @property
    def mb_per_s(self) -> float:
        """Observation megabytes (10**6 bytes) moved per second."""
        return self.steps_per_s * self.obs_bytes / 1e6

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "workload": self.workload,
            "transport": self.transport,
            "steps_per_s": round(self.steps_per_s, 1),
            "mb_per_s": round(self.mb_per_s, 2),
            "obs_bytes": self.obs_bytes,
            "rounds_steps_per_s": [round(r, 1) for r in self.rounds],
        }


def start_server(
    target: str,
    kwargs: dict[str, Any],
    address: str,
    *,
    python: str | None = None,
    timeout: float = 60.0,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    quiet: bool = False,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``rlmesh serve`` in a subprocess; return it and its bound address.

    Args:
        target: what to serve (a Gymnasium id or ``module:factory``).
        kwargs: keyword arguments for the env (``--kwargs-json``).
        address: where to bind.
        python: the interpreter (default: this one).
        timeout: how long to wait for the server's address.
        extra: more ``rlmesh serve`` arguments.
        env: the subprocess's environment (default: this one's).
        cwd: the subprocess's working directory.
        quiet: silence the server's stderr.

    Raises:
        RuntimeError: the server did not report its address in time.
    """
    read_fd, write_fd = os.pipe()
    cmd = [
        python or sys.executable,
        "-m",
        "rlmesh",
        "serve",
        target,
        "--address",
        address,
        "--ready-fd",
        str(write_fd),
    ]
    if kwargs:
        cmd += ["--kwargs-json", json.dumps(kwargs)]
    cmd += list(extra)
    proc = subprocess.Popen(
        cmd,
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if quiet else None,
        env=env,
        cwd=cwd,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "r") as ready:
            import select

            poller = select.poll()  # not select(2): the pipe's descriptor may pass 1024
            poller.register(ready, select.POLLIN)
            line = ready.readline().strip() if poller.poll(timeout * 1000) else ""
        if not line:
            raise RuntimeError(f"`rlmesh serve {target}` did not report its address within {timeout}s")
        return proc, line
    except BaseException:
        stop_server(proc)
        raise


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server subprocess: SIGTERM, then SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def measure(env: Any, seconds: float, rounds: int = 3) -> list[float]:
    """Step ``env`` (reset when an episode ends) for ``seconds`` per round; steps/s per round."""
    env.reset(seed=0)
    for _ in range(50):  # warm up: segments mapped, spin budgets settled
        _, _, terminated, truncated, _ = env.step(0)
        if terminated or truncated:
            env.reset()
    results = []
    for _ in range(rounds):
        steps = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(64):
                _, _, terminated, truncated, _ = env.step(steps & 1)
                steps += 1
                if terminated or truncated:
                    env.reset()
            now = time.perf_counter()
            if now >= deadline:
                break
        results.append(steps / (now - start))
    return results


def vector_rates(
    envs: Any,
    batches: Sequence[Any],
    seconds: float,
    rounds: int,
    *,
    seed: int = 0,
    warmup_steps: int = 50,
    warmup_s: float = 0.5,
) -> list[float]:
    """Step a vector env through pre-generated action batches; env-steps/s per round.

    The one timing loop of every vector row, rlmesh's and the peers': ``envs``
    is anything with Gymnasium's vector ``reset(seed=)`` and ``step(actions)``
    whose lanes reset themselves (autoreset), so the loop never resets. It
    resets once with ``seed`` (lane ``i`` gets ``seed + i``), warms up for
    ``warmup_steps`` batches (cut short after ``warmup_s``), then runs
    ``rounds`` rounds of ``seconds`` each, cycling through ``batches`` (one
    action per lane each; random actions drawn beforehand, so no policy cost
    is timed). A round's rate is batches stepped x lanes / seconds; the clock
    is read after every batch, so a round overshoots by one batch at most.

    Raises:
        ValueError: no batches, or fewer than one round.
    """
    if not batches or rounds < 1:
        raise ValueError("vector_rates needs at least one action batch and one round")
    lanes = len(batches[0])
    count = len(batches)
    clock = time.perf_counter
    step = envs.step
    envs.reset(seed=seed)
    stop = clock() + warmup_s
    for i in range(warmup_steps):
        step(batches[i % count])
        if clock() >= stop:
            break
    rates = []
    index = 0
    for _ in range(rounds):
        steps = 0
        start = now = clock()
        end = start + seconds
        while now < end:
            step(batches[index])
            index = index + 1 if index + 1 < count else 0
            steps += 1
            now = clock()
        rates.append(steps * lanes / (now - start))
    return rates


def vector_serve_args(num_envs: int, workers: int | None) -> list[str]:
    """The ``rlmesh serve`` arguments of a vector row: ``num_envs`` lanes on ``workers`` worker processes.

    ``workers=None`` serves one in-process ``SyncVectorEnv`` (``--vectorization-mode sync``). The
    mode is always explicit: a target the fast path refuses then fails to start instead of
    being served, unnoticed, the other way.
    """
    if workers is None:
        return ["--num-envs", str(num_envs), "--vectorization-mode", "sync"]
    return ["--num-envs", str(num_envs), "--vectorization-mode", "async", "--workers", str(workers)]


def run_vector_cells(
    *,
    seconds: float = 1.0,
    rounds: int = 3,
    workers: int | None = 1,
    progress: Callable[[str], None] | None = None,
) -> list[Cell]:
    """The demo's vector rows: ``VECTOR_NUM_ENVS`` CartPoles stepped as one batch, two ways.

    * rlmesh: ``rlmesh serve CartPole-v1 --num-envs 8 --workers W`` in a
      subprocess (``workers=None``: no workers, the in-process
      ``SyncVectorEnv``), driven from here with ``rlmesh.numpy.RemoteVectorEnv``;
    * gymnasium's ``AsyncVectorEnv(shared_memory=True)``, one spawned process
      per lane, driven from here.

    Both get the same seeds and the same pre-generated random actions, and are
    timed by :func:`vector_rates`; a cell's ``steps_per_s`` counts env-steps
    (batches x lanes). Every process started here is stopped before returning.

    Raises:
        RuntimeError: the server did not start. ImportError: gymnasium or numpy is missing.
    """
    import functools

    import gymnasium
    import numpy as np

    from .numpy import RemoteVectorEnv

    n = VECTOR_NUM_ENVS
    batches = list(np.random.default_rng(0).integers(0, 2, size=(256, n), dtype=np.int64))
    obs_bytes = 4 * 4  # CartPole: four float32s per lane
    cells: list[Cell] = []

    def add(name: str, rates: list[float]) -> None:
        cell = Cell(VECTOR_WORKLOAD, name, statistics.median(rates), obs_bytes, rates)
        cells.append(cell)
        if progress is not None:
            progress(f"{VECTOR_WORKLOAD:>14} {name:<26}: {cell.steps_per_s:>9,.0f} env-steps/s")

    with tempfile.TemporaryDirectory(prefix="rlmesh-demo-") as tmp:
        server, address = start_server(
            "CartPole-v1", {}, f"unix://{tmp}/vector.sock", quiet=True, extra=vector_serve_args(n, workers)
        )
        try:
            envs = RemoteVectorEnv(address, connect_timeout_seconds=30)
            try:
                rates = vector_rates(envs, batches, seconds, rounds)
            finally:
                envs.close()
        finally:
            stop_server(server)
    if workers is None:
        add("rlmesh, served SyncVectorEnv", rates)
    else:
        add(f"rlmesh, {workers} worker{'s' if workers > 1 else ''}", rates)
    make = functools.partial(gymnasium.make, "CartPole-v1")
    peer = gymnasium.vector.AsyncVectorEnv([make] * n, shared_memory=True, context="spawn")
    try:
        rates = vector_rates(peer, batches, seconds, rounds)
    finally:
        peer.close()
    add(VECTOR_PEER, rates)
    return cells


def run_cells(
    workloads: Sequence[str],
    transports: Sequence[str],
    *,
    seconds: float = 1.0,
    rounds: int = 3,
    progress: Callable[[str], None] | None = None,
) -> list[Cell]:
    """Measure every workload over every transport with the NumPy client."""
    from .numpy import RemoteEnv

    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="rlmesh-demo-") as tmp:
        for workload in workloads:
            target, kwargs = WORKLOADS[workload]
            servers = {}
            try:
                if {"shm", "unix"} & set(transports):
                    servers["unix"] = start_server(
                        target, kwargs, f"unix://{tmp}/{len(cells)}.sock", quiet=True
                    )
                if "tcp" in transports:
                    servers["tcp"] = start_server(target, kwargs, "tcp://127.0.0.1:0", quiet=True)
                for transport in transports:
                    address = servers["tcp" if transport == "tcp" else "unix"][1]
                    env = RemoteEnv(address, shared_memory=transport == "shm", connect_timeout_seconds=30)
                    try:
                        obs_bytes = int(
                            env.observation_space_spec.shape and _nbytes(env.observation_space_spec)
                        )
                        per_round = measure(env, seconds, rounds)
                    finally:
                        env.close()
                    cell = Cell(workload, transport, statistics.median(per_round), obs_bytes, per_round)
                    cells.append(cell)
                    if progress is not None:
                        progress(f"{workload:>12} over {transport:<4}: {cell.steps_per_s:>9,.0f} steps/s")
            finally:
                for proc, _ in servers.values():
                    stop_server(proc)
    return cells


def _nbytes(spec: Any) -> int:
    from ._dtypes import DTYPES

    count = 1
    for dim in spec.shape:
        count *= dim
    return count * DTYPES[spec.dtype].itemsize


def table(cells: Sequence[Cell]) -> str:
    """A markdown table of the cells."""
    lines = ["| workload | transport | steps/s (median) | MB/s |", "|---|---|---:|---:|"]
    for cell in cells:
        lines.append(
            f"| {cell.workload} | {cell.transport} | {cell.steps_per_s:,.0f} | {cell.mb_per_s:,.1f} |"
        )
    return "\n".join(lines)


def vector_table(cells: Sequence[Cell]) -> str:
    """A markdown table of the vector rows: env-steps/s and each row's ratio to gymnasium's AsyncVectorEnv."""
    peer = next((c.steps_per_s for c in cells if c.transport == VECTOR_PEER), None)
    lines = [
        f"| workload | vector env | env-steps/s (median) | x {VECTOR_PEER} |",
        "|---|---|---:|---:|",
    ]
    for cell in cells:
        ratio = f"{cell.steps_per_s / peer:.1f}x" if peer else "-"
        lines.append(f"| {cell.workload} | {cell.transport} | {cell.steps_per_s:,.0f} | {ratio} |")
    return "\n".join(lines)


def plot(cells: Sequence[Cell], path: str, vector: Sequence[Cell] = ()) -> bool:
    """Write a bar chart of steps/s to ``path``; False if matplotlib is missing.

    With ``vector`` cells, a second panel shows their env-steps/s side by side.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    workloads = list(dict.fromkeys(c.workload for c in cells))
    transports = list(dict.fromkeys(c.transport for c in cells))
    if vector:
        fig, (ax, vax) = plt.subplots(
            1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [max(len(workloads), 1) * 1.4, 1]}
        )
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(transports), 1)
    for i, transport in enumerate(transports):
        values = [
            next((c.steps_per_s for c in cells if c.workload == w and c.transport == transport), 0)
            for w in workloads
        ]
        positions = [x + i * width for x in range(len(workloads))]
        bars = ax.bar(positions, values, width, label=transport)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7)
    ax.set_xticks([x + width * (len(transports) - 1) / 2 for x in range(len(workloads))], workloads)
    ax.set_yscale("log")
    ax.set_ylabel("env steps per second (log scale)")
    ax.set_title("rlmesh: one env served in another process")
    ax.legend(title="transport")
    if vector:
        names = [c.transport for c in vector]
        values = [c.steps_per_s for c in vector]
        bars = vax.bar(range(len(vector)), values, 0.6, color=[f"C{i + 3}" for i in range(len(vector))])
        vax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7)
        vax.set_xticks(range(len(vector)), names, fontsize=8)
        vax.set_ylabel("env steps per second (all lanes)")
        vax.set_title(f"vector env: {vector[0].workload}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -- the sandbox rows ---------------------------------------------------------------------


def sandbox_params() -> dict[str, Any]:
    """The :class:`~rlmesh.numpy.SandboxEnv` inputs of every sandbox row (besides the source and its kwargs).

    The default base image and rlmesh from this checkout (``rlmesh_package``
    None), with Gymnasium and NumPy pinned to the host's versions: the
    inputs of ``tests/integration/test_sandbox.py``, so the same checkout
    builds one image for both. ``rlmesh._demo:ImageEnv`` is in rlmesh's
    wheel, so the container serves the same env as the host rows.

    Raises:
        importlib.metadata.PackageNotFoundError: gymnasium or numpy is not installed here.
    """
    from importlib import metadata

    return {
        "packages": [f"gymnasium=={metadata.version('gymnasium')}", f"numpy=={metadata.version('numpy')}"]
    }


def docker_daemon() -> str | None:
    """None when a local Docker daemon answers (and the ``docker`` package is here); else why not."""
    try:
        from .sandbox import _docker

        api = _docker.client()
    except Exception as exc:  # BackendUnavailable (no docker package), SandboxError (no daemon)
        return str(exc).splitlines()[0]
    api.close()
    return None


def sandbox_image_ready() -> str | None:
    """The tag of the sandbox rows' image if it is built; None if a start would build it first.

    Looks only: it builds, downloads and runs nothing (the base image's
    Python, rlmesh's wheel and the wheelhouse must already be in the
    sandbox cache, as after a first start). None too without a daemon.
    """
    try:
        from .sandbox import _docker, _image

        api = _docker.client()
    except Exception:
        return None
    try:
        return _image.existing_image(api, sandbox_params()["packages"])
    finally:
        api.close()


def run_sandbox_cells(
    workloads: Sequence[str],
    *,
    seconds: float = 1.0,
    rounds: int = 3,
    progress: Callable[[str], None] | None = None,
) -> list[Cell]:
    """Each workload served in a Docker sandbox (:func:`sandbox_params`), stepped from here with rlmesh.numpy.

    Timed by :func:`measure`, as :func:`run_cells`; the transport is
    ``sandbox-shm``. Every container is stopped and removed before returning.

    Raises:
        SandboxError: a container did not start (the image build is not
            avoided here: callers check :func:`sandbox_image_ready` first).
    """
    from .numpy import SandboxEnv

    cells: list[Cell] = []
    for workload in workloads:
        target, kwargs = WORKLOADS[workload]
        with SandboxEnv(target, connect_timeout_seconds=60, **sandbox_params(), **kwargs) as env:
            obs_bytes = int(env.observation_space_spec.shape and _nbytes(env.observation_space_spec))
            per_round = measure(env, seconds, rounds)
        cell = Cell(workload, SANDBOX_TRANSPORT, statistics.median(per_round), obs_bytes, per_round)
        cells.append(cell)
        if progress is not None:
            progress(f"{workload:>12} in a sandbox: {cell.steps_per_s:>9,.0f} steps/s")
    return cells


def demo_sandbox_cells(
    *,
    build: bool = False,
    seconds: float = 1.0,
    rounds: int = 3,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Cell], str | None]:
    """The demo's sandbox rows, if they are quick to run: ``(cells, None)``, else ``([], why not)``.

    They run when a Docker daemon answers and their image is already built
    (:func:`sandbox_image_ready`), or with ``build=True`` (the first build
    takes a minute or more). Otherwise nothing starts, and the one-line note
    says why and how to enable them.

    Raises:
        SandboxError: a container did not start although the image was there.
    """
    why = docker_daemon()
    if why is not None:
        return [], "sandbox rows skipped: no Docker daemon"
    if not build and sandbox_image_ready() is None:
        return [], (
            "sandbox rows skipped: their image is not built yet (a build takes a minute or more); "
            "`rlmesh demo --build-sandbox` builds it once, later demos reuse it"
        )
    return run_sandbox_cells(SANDBOX_WORKLOADS, seconds=seconds, rounds=rounds, progress=progress), None


def sandbox_ratios(cells: Sequence[Cell]) -> str:
    """One line: each sandbox row's steps/s over the host-served shm row's, per workload."""
    host = {c.workload: c.steps_per_s for c in cells if c.transport == "shm"}
    parts = [
        f"{c.workload} {c.steps_per_s / host[c.workload]:.2f}x"
        for c in cells
        if c.transport == SANDBOX_TRANSPORT and host.get(c.workload)
    ]
    return f"{SANDBOX_TRANSPORT} over shm served on the host (target >= 0.8x): " + ", ".join(parts)
