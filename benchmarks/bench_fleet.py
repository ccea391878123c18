"""Many endpoints as one vector env, and env fleets on Ray: per-step cost and recovery, in one run.

Workload: ``CartPole-v1``, ``--endpoints`` E endpoints of ``--lanes`` L lanes
each (default 4 x 16 = 64 lanes), random actions drawn beforehand, timed by
the vector rows' one loop (``rlmesh._demo.vector_rates``: ``--rounds`` rounds
of ``--seconds``, median env-steps/s).

Rows (``--impl``, repeatable; default all that can run):

* ``direct``: E ``rlmesh serve`` subprocesses (vector fast path, one worker
  each) on loopback TCP without shared memory (the cross-host path), one
  ``rlmesh.numpy.RemoteVectorEnv`` per endpoint: ``step_async`` to every one,
  then ``step_wait`` on every one;
* ``sharded``: the same servers as one ``rlmesh.numpy.ShardedVectorEnv``
  (target: within 10% of ``direct``'s per-step cost);
* ``fleet`` (Ray): an ``rlmesh.ray.EnvFleet`` of E hosts on a local Ray
  (``ray.init``), stepped through ``fleet.vector_env()``: Ray off the hot path;
* ``ray-actors`` (Ray): the plain Ray baseline, one actor per host holding a
  ``gymnasium`` ``SyncVectorEnv`` of L lanes, stepped by
  ``ray.get([host.step.remote(actions_i) ...])`` (target: ``fleet`` at least
  3x this on CartPole-sized steps);
* ``recovery`` (Ray): SIGKILL one host of the fleet while stepping; the
  seconds until its lanes are reported lost, and until they are back
  (``rlmesh_restarted``), medians over ``--kills`` kills (target: back within 15 s).

The Ray rows need Ray (``pip install "rlmesh[ray]"``) and say "not installed"
otherwise; ``--no-ray`` skips them. Output: one JSON line per row (via
``_harness``), then a markdown table and the targets with pass/fail. Timing
on a shared or busy machine is noise: quote medians from a quiet one.

Run: ``python -m benchmarks.bench_fleet [--quick] [--no-ray]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks._harness import Runner, add_common_args, markdown_table  # noqa: E402
from rlmesh._demo import start_server, vector_rates  # noqa: E402

ENV_ID = "CartPole-v1"
IMPLS = ["direct", "sharded", "fleet", "ray-actors", "recovery"]
RAY_IMPLS = {"fleet", "ray-actors", "recovery"}


class DirectClients:
    """E RemoteVectorEnv clients stepped as one: send to every endpoint, then collect from every one."""

    def __init__(self, clients: list[Any]) -> None:
        self.clients = clients
        self.bounds = np.cumsum([0] + [c.num_envs for c in clients])

    def reset(self, *, seed: int | None = None) -> Any:
        return [
            c.reset(seed=None if seed is None else seed + int(lo))
            for c, lo in zip(self.clients, self.bounds, strict=False)
        ]

    def step(self, actions: Any) -> Any:
        for c, lo, hi in zip(self.clients, self.bounds, self.bounds[1:], strict=False):
            c.step_async(actions[lo:hi])
        parts = [c.step_wait() for c in self.clients]
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(4)) + ({},)


class RayActors:
    """The plain Ray baseline: one actor per host with a SyncVectorEnv, stepped by actor calls."""

    def __init__(self, ray: Any, hosts: int, lanes: int) -> None:
        @ray.remote(num_cpus=0)
        class VectorHost:
            def __init__(self, lanes: int) -> None:
                import gymnasium as gym

                self.env = gym.make_vec(ENV_ID, num_envs=lanes, vectorization_mode="sync")

            def reset(self, seed: int) -> Any:
                return self.env.reset(seed=seed)[0]

            def step(self, actions: Any) -> Any:
                obs, reward, terminated, truncated, _ = self.env.step(actions)
                return obs, reward, terminated, truncated

            def close(self) -> None:
                self.env.close()

        self.ray = ray
        self.lanes = lanes
        self.hosts = [VectorHost.remote(lanes) for _ in range(hosts)]  # type: ignore[attr-defined]

    def reset(self, *, seed: int | None = None) -> Any:
        base = seed or 0
        return self.ray.get([h.reset.remote(base + i * self.lanes) for i, h in enumerate(self.hosts)])

    def step(self, actions: Any) -> Any:
        n = self.lanes
        parts = self.ray.get([h.step.remote(actions[i * n : (i + 1) * n]) for i, h in enumerate(self.hosts)])
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(4)) + ({},)

    def close(self) -> None:
        self.ray.get([h.close.remote() for h in self.hosts])
        for h in self.hosts:
            self.ray.kill(h)


@contextlib.contextmanager
def servers(endpoints: int, lanes: int) -> Iterator[list[str]]:
    """E ``rlmesh serve`` subprocesses on loopback TCP (vector fast path, one worker each)."""
    procs = []
    try:
        addresses = []
        for _ in range(endpoints):
            proc, address = start_server(
                ENV_ID,
                {},
                "tcp://127.0.0.1:0",
                extra=("--num-envs", str(lanes), "--workers", "1"),
                quiet=True,
            )
            procs.append(proc)
            addresses.append(address)
        yield addresses
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except Exception:  # noqa: BLE001 - a server that does not stop is killed
                proc.kill()
                proc.wait()


def measure_recovery(fleet: Any, env: Any, batches: list[Any], kills: int) -> tuple[list[float], list[float]]:
    """SIGKILL host 0 ``kills`` times while stepping; seconds to lost, and to restarted."""
    lost_s, back_s = [], []
    lanes = env.lanes_of(0) if hasattr(env, "lanes_of") else range(fleet.hosts()[0].lanes)
    sl = slice(lanes.start, lanes.stop)
    for k in range(kills):
        host = fleet.hosts()[0]
        assert host.pid is not None
        os.kill(host.pid, signal.SIGKILL)
        killed = time.monotonic()
        lost = None
        i = 0
        while True:
            _, _, _, _, info = env.step(batches[i % len(batches)])
            i += 1
            now = time.monotonic()
            if lost is None and info["rlmesh_lost"][sl].all():
                lost = now - killed
            if info["rlmesh_restarted"][sl].all():
                back_s.append(now - killed)
                break
            if now - killed > 60:
                raise RuntimeError(f"kill {k}: the lanes did not come back within 60 s")
        lost_s.append(lost if lost is not None else float("nan"))
    return lost_s, back_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument(
        "--impl", action="append", choices=IMPLS, help="rows to run (repeatable; default all)"
    )
    parser.add_argument("--endpoints", type=int, default=4)
    parser.add_argument("--lanes", type=int, default=16, help="lanes per endpoint")
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per round (default 2, quick 0.3)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per row (default 5, quick 2)")
    parser.add_argument(
        "--kills", type=int, default=None, help="host kills for the recovery row (default 3, quick 1)"
    )
    parser.add_argument("--no-ray", action="store_true", help="skip the rows that need Ray")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 2.0)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    kills = args.kills if args.kills is not None else (1 if args.quick else 3)
    impls = args.impl or IMPLS
    runner = Runner("bench_fleet", args, extra_packages=("ray", "gymnasium"))
    total = args.endpoints * args.lanes
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 2, size=total, dtype=np.int64) for _ in range(64)]
    rates: dict[str, float | None] = {}
    notes: dict[str, str] = {}

    def record(impl: str, values: list[float]) -> None:
        rates[impl] = statistics.median(values)
        runner.emit(
            {"impl": impl, "endpoints": args.endpoints, "lanes": args.lanes},
            {"env_steps_per_s_median": rates[impl], "rounds": values, "timed_s": seconds * rounds},
        )

    import rlmesh.numpy as rnp

    if {"direct", "sharded"} & set(impls):
        with servers(args.endpoints, args.lanes) as addresses:
            if "direct" in impls:
                clients = [rnp.RemoteVectorEnv(a, shared_memory=False) for a in addresses]
                try:
                    record("direct", vector_rates(DirectClients(clients), batches, seconds, rounds))
                finally:
                    for c in clients:
                        c.close()
            if "sharded" in impls:
                with contextlib.closing(rnp.ShardedVectorEnv(addresses, shared_memory=False)) as env:
                    record("sharded", vector_rates(env, batches, seconds, rounds))

    recovery: dict[str, float] = {}
    ray_rows = [i for i in impls if i in RAY_IMPLS]
    if ray_rows and args.no_ray:
        notes.update(dict.fromkeys(ray_rows, "skipped (--no-ray)"))
    elif ray_rows:
        try:
            import ray
        except ImportError:
            notes.update(dict.fromkeys(ray_rows, "not installed"))
        else:
            import rlmesh.ray as rr

            ray.init(
                num_cpus=args.endpoints + 1,
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
            )
            try:
                if "ray-actors" in impls:
                    baseline = RayActors(ray, args.endpoints, args.lanes)
                    try:
                        record("ray-actors", vector_rates(baseline, batches, seconds, rounds))
                    finally:
                        baseline.close()
                if {"fleet", "recovery"} & set(impls):
                    started = time.monotonic()
                    with rr.EnvFleet(
                        ENV_ID,
                        num_envs=total,
                        hosts=args.endpoints,
                        restart=rr.RestartPolicy(max_restarts=kills + 1),
                    ) as fleet:
                        runner.note(
                            f"fleet of {args.endpoints} hosts started in {time.monotonic() - started:.1f} s"
                        )
                        with contextlib.closing(fleet.vector_env(request_timeout_seconds=30)) as env:
                            if "fleet" in impls:
                                record("fleet", vector_rates(env, batches, seconds, rounds))
                            if "recovery" in impls:
                                env.reset(seed=0)
                                lost_s, back_s = measure_recovery(fleet, env, batches, kills)
                                recovery = {
                                    "lost_s": statistics.median(lost_s),
                                    "back_s": statistics.median(back_s),
                                }
                                runner.emit(
                                    {"impl": "recovery", "endpoints": args.endpoints, "lanes": args.lanes},
                                    {
                                        **recovery,
                                        "lost_all": lost_s,
                                        "back_all": back_s,
                                        "ray": ray.__version__,
                                    },
                                )
            finally:
                ray.shutdown()

    if not args.json_only:
        rows = []
        for impl in IMPLS:
            if impl == "recovery":
                value = (
                    f"lost {recovery['lost_s']:.2f} s, back {recovery['back_s']:.2f} s" if recovery else None
                )
            else:
                rate = rates.get(impl)
                value = None if rate is None else f"{rate:,.0f} env-steps/s"
            rows.append([impl, value or notes.get(impl, "not run")])
        print(markdown_table(["row", "median"], rows))
        targets = []
        if rates.get("direct") and rates.get("sharded"):
            cost = rates["direct"] / rates["sharded"]  # type: ignore[operator]
            targets.append(
                ["sharded per-step cost <= 1.10x direct", f"{cost:.2f}x", "pass" if cost <= 1.10 else "FAIL"]
            )
        if rates.get("fleet") and rates.get("ray-actors"):
            ratio = rates["fleet"] / rates["ray-actors"]  # type: ignore[operator]
            targets.append(["fleet >= 3x ray-actors", f"{ratio:.1f}x", "pass" if ratio >= 3 else "FAIL"])
        if recovery:
            targets.append(
                [
                    "lanes back <= 15 s",
                    f"{recovery['back_s']:.2f} s",
                    "pass" if recovery["back_s"] <= 15 else "FAIL",
                ]
            )
        if targets:
            print(markdown_table(["target", "measured", ""], targets))
    runner.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
