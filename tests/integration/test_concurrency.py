"""Many clients at once on one EnvServer: no hang, no cross-talk, no session left behind.

Failure-matrix rows R27 and R28. Sixty-four client threads connect to one
server at the same instant (a thundering herd on the listen queue and the
handshake), then all step their own env concurrently. Every observation
echoes the client id, the step count and the action the env was given, so a
response routed to the wrong session, or two sessions sharing one env, shows
up as a wrong echo. The server must count 64 live sessions while they run and
none once the clients have closed.

Everything runs in this process: server sessions and clients are threads that
share one GIL, which is the harshest schedule for latency and the one most
likely to expose a lost wake-up (a request that is never answered).
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any

import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh import spaces

pytestmark = pytest.mark.timeout(120)

CLIENTS = 64
STEPS = 200
#: Every blocking wait of the test (barriers, joins, connect, requests) ends by this.
WAIT = 30.0
#: A step this slow means something hung; the real p99 is orders of magnitude below.
P99_BOUND = 2.0
#: Room for every action of every client, so an action identifies (client, step).
ACTION_SPACE = CLIENTS * (STEPS + 1)


class EchoEnv:
    """Observations [client id, step count, last action]; the client id is the reset seed."""

    metadata: dict[str, Any] = {"render_modes": []}
    render_mode = None

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-1, 1 << 40, (3,), "int64")
        self.action_space = spaces.Discrete(ACTION_SPACE)
        self.client = -1
        self.t = 0
        self.closed = False

    def _obs(self, action: int) -> np.ndarray:
        return np.array([self.client, self.t, action], dtype=np.int64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self.client = -1 if seed is None else seed
        self.t = 0
        return self._obs(-1), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        return self._obs(int(action)), 0.0, False, False, {}

    def close(self) -> None:
        self.closed = True


class EchoFactory:
    """A zero-argument env factory that remembers every env it built (one per session)."""

    def __init__(self) -> None:
        self.envs: list[EchoEnv] = []
        self._lock = threading.Lock()

    def __call__(self) -> EchoEnv:
        env = EchoEnv()
        with self._lock:
            self.envs.append(env)
        return env


def action_for(client: int, step: int) -> int:
    # Distinct for every (client, step): an echo of anyone else's action cannot pass.
    return client * (STEPS + 1) + step


def session_count(server: rlmesh.EnvServer) -> int:
    return len(server.stats()["sessions"])


def session_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("rlmesh-session-")}


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("transport", ["unix-shm", "unix-inline", "tcp-inline"])
def test_64_concurrent_clients_get_their_own_sessions_without_cross_talk(serve, transport: str) -> None:
    factory = EchoFactory()
    sessions_before = session_threads()
    served = serve(factory, transport)
    server: rlmesh.EnvServer = served.server
    # Parties: every client thread plus this one, which checks the server in between.
    herd = threading.Barrier(CLIENTS)
    midway = threading.Barrier(CLIENTS + 1)
    resume = threading.Barrier(CLIENTS + 1)
    failures: dict[int, str] = {}
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    retries: list[str] = []
    data_planes: set[str] = set()

    def connect() -> rnp.RemoteEnv:
        # R28 allows a retryable refusal under the herd (a busy or refused
        # handshake); it must never hang, and a retry must get in.
        deadline = time.monotonic() + WAIT
        while True:
            try:
                return served.client(
                    rnp.RemoteEnv, connect_timeout_seconds=WAIT, request_timeout_seconds=WAIT
                )
            except (rlmesh.ConnectError, rlmesh.BusyError) as exc:
                retries.append(f"{type(exc).__name__}: {exc}")
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def steps(env: rnp.RemoteEnv, client: int, first: int, last: int) -> None:
        record = latencies[client].append
        for t in range(first, last + 1):
            action = action_for(client, t)
            start = time.perf_counter()
            obs, *_ = env.step(action)
            record(time.perf_counter() - start)
            assert obs.tolist() == [client, t, action], f"client {client} step {t} got {obs.tolist()}"

    def run(client: int) -> None:
        env = None
        try:
            herd.wait(WAIT)
            env = connect()
            data_planes.add(env.data_plane)
            obs, _ = env.reset(seed=client)
            assert obs.tolist() == [client, 0, -1], f"client {client} reset got {obs.tolist()}"
            steps(env, client, 1, STEPS // 2)
            midway.wait(WAIT)
            resume.wait(WAIT)
            steps(env, client, STEPS // 2 + 1, STEPS)
        except BaseException:
            failures[client] = traceback.format_exc()
            # Release everyone at once instead of letting them wait out the barrier.
            for barrier in (herd, midway, resume):
                barrier.abort()
        finally:
            if env is not None:
                env.close()

    threads = [
        threading.Thread(target=run, args=(i,), name=f"client-{i}", daemon=True) for i in range(CLIENTS)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()

    def report() -> str:
        # Root causes first: the others only saw the barrier broken under them.
        ordered = sorted(failures.items(), key=lambda kv: ("BrokenBarrierError" in kv[1], kv[0]))
        broken = sum("BrokenBarrierError" in tb for tb in failures.values())
        return "\n".join(f"--- client {i} ---\n{tb}" for i, tb in ordered[:5]) + (
            f"\n({len(failures) - broken} clients failed, {broken} more saw the barrier broken)"
        )

    live: int | None = None
    try:
        midway.wait(WAIT)
        # Every client has connected and stepped; none has closed yet. The
        # count is checked after the join, so that a wrong count cannot leave
        # clients running into the fixture's teardown.
        live = session_count(server)
        resume.wait(WAIT)
    except threading.BrokenBarrierError:
        pass  # a client failed or hung; its traceback or name is reported below

    for thread in threads:
        thread.join(max(started + 2 * WAIT - time.monotonic(), 0.1))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"client threads still running (hung): {stuck}\n{report() if failures else ''}"
    if failures:
        pytest.fail(report(), pytrace=False)
    elapsed = time.monotonic() - started
    assert live == CLIENTS, f"the server saw {live} sessions midway, expected {CLIENTS}"

    # Every session ends once its client closes, and takes its env with it.
    assert wait_until(lambda: session_count(server) == 0, 5.0), (
        f"{session_count(server)} sessions still live 5 s after every client closed"
    )
    assert wait_until(lambda: not (session_threads() - sessions_before), 5.0), "session threads left"
    assert len(factory.envs) == CLIENTS, f"{len(factory.envs)} envs built for {CLIENTS} sessions"
    assert all(env.closed for env in factory.envs), "an env was not closed with its session"
    assert data_planes == {"shm" if served.shm else "inline"}, data_planes

    flat = np.concatenate([np.asarray(lat) for lat in latencies])
    assert flat.size == CLIENTS * STEPS
    p50, p99 = np.percentile(flat, [50, 99])
    summary = (
        f"{transport}: {CLIENTS} clients x {STEPS} steps in {elapsed:.2f}s, "
        f"step p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max {flat.max() * 1e3:.2f} ms, "
        f"{len(retries)} connect retries"
    )
    print(summary)
    assert p99 < P99_BOUND, summary
