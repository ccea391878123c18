"""Vector env throughput: rlmesh worker processes against gymnasium and PufferLib, idle and busy, in one run.

Workloads, ``NUM_ENVS`` = 8 lanes each: ``CartPole-v1``, and ``84x84x4 uint8``
(``_vector_envs.PixelEnv``: a cheap step that writes a whole new 28 KiB frame,
so the rate measures moving observations, not computing them).

Rows (``--impl``, repeatable; default all):

* ``rlmesh-w1`` / ``rlmesh-w2``: the fast path, ``rlmesh serve TARGET
  --num-envs 8 --workers W`` in a subprocess (W worker processes writing into
  one shared batch slab), driven from here with ``rlmesh.numpy.RemoteVectorEnv``;
* ``rlmesh-sync``: the served in-process ``SyncVectorEnv`` (the path before
  the fast one), for reference;
* ``gymnasium-async``: ``gymnasium.vector.AsyncVectorEnv(shared_memory=True)``,
  one spawned process per lane: the stock way, and what the ratios compare with;
* ``gymnasium-sync``: ``gymnasium.vector.SyncVectorEnv`` in this process, the
  ceiling of any cross-process scheme;
* ``pufferlib-w1`` / ``pufferlib-w2``: PufferLib's ``Multiprocessing`` backend
  with 1 and 2 worker processes, where ``import pufferlib`` works (else the
  rows say "not installed").

Every row gets the same seeds (lane ``i`` reset with ``i``) and the same
pre-generated random actions, and is timed by one loop,
``rlmesh._demo.vector_rates``: ``--rounds`` rounds of ``--seconds``, median
env-steps/s (batches x lanes / seconds). Each row is measured in every
condition of ``--conditions``: ``idle``, and ``busy`` with one extra process
spinning on a core for the whole measurement.

Output: one JSON line per row and condition, one per target, then a markdown
table (env-steps/s side by side, each rlmesh row's ratio to gymnasium's
AsyncVectorEnv in the same condition), the targets of issue 10 with pass/fail,
and a PNG plot (``--plot``; skipped with a note if matplotlib is missing).

Run: ``python -m benchmarks.bench_vector [--quick] [--conditions idle,busy]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _vector_envs  # noqa: E402
from benchmarks._harness import (  # noqa: E402
    Runner,
    busy_processes,
    deadline,
    markdown_table,
    sigterm_as_exit,
)
from benchmarks.bench_transports import CONDITIONS, parse_conditions  # noqa: E402
from rlmesh import _demo  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Lanes in every row.
NUM_ENVS = 8
#: The bound on starting a row's envs (server, worker processes), on top of its timed rounds.
SETUP_TIMEOUT = 120.0
#: Distinct pre-generated action batches the timing loop cycles through.
ACTION_BATCHES = 1024
ACTION_SEED = 12345
#: Every row's reset seed (lane i gets RESET_SEED + i).
RESET_SEED = 0
#: The row every ratio is taken against.
BASELINE = "gymnasium-async"
DEFAULT_PLOT = HERE / "results" / "bench_vector.png"

#: Runs one condition's rounds of a row and returns env-steps/s per round.
Timer = Callable[[], list[float]]


@dataclass(frozen=True)
class Workload:
    """What a workload's lanes are, for ``rlmesh serve`` and for the in-process peers."""

    source: str  # rlmesh serve's TARGET
    factory: Callable[[], Any]  # a module-level factory of one lane (picklable)
    obs_bytes: int  # one lane's observation


WORKLOADS: dict[str, Workload] = {
    "CartPole-v1": Workload("CartPole-v1", _vector_envs.make_cartpole, 4 * 4),
    "84x84x4 uint8": Workload("benchmarks._vector_envs:make_pixels", _vector_envs.make_pixels, 84 * 84 * 4),
}


@dataclass(frozen=True)
class Impl:
    """One row: who steps the lanes, and with how many worker processes."""

    name: str
    kind: str  # "rlmesh", "gymnasium-async", "gymnasium-sync" or "pufferlib"
    workers: int | None  # worker processes (None: rlmesh's in-process SyncVectorEnv)
    what: str


IMPLS: dict[str, Impl] = {
    impl.name: impl
    for impl in (
        Impl("rlmesh-w1", "rlmesh", 1, "rlmesh fast path, 1 worker process"),
        Impl("rlmesh-w2", "rlmesh", 2, "rlmesh fast path, 2 worker processes"),
        Impl("rlmesh-sync", "rlmesh", None, "rlmesh serving an in-process SyncVectorEnv"),
        Impl("gymnasium-async", "gymnasium-async", NUM_ENVS, "AsyncVectorEnv(shared_memory=True)"),
        Impl("gymnasium-sync", "gymnasium-sync", 0, "SyncVectorEnv in this process"),
        Impl("pufferlib-w1", "pufferlib", 1, "PufferLib Multiprocessing, 1 worker"),
        Impl("pufferlib-w2", "pufferlib", 2, "PufferLib Multiprocessing, 2 workers"),
    )
}


@dataclass(frozen=True)
class Target:
    """A ratio issue 10 asks for: ``impl`` over ``against`` on ``workload`` in ``condition``."""

    label: str
    workload: str
    impl: str
    condition: str
    against: str  # an impl name, or "pufferlib-best": the faster PufferLib row
    required: float


TARGETS = (
    Target("1 worker vs gymnasium async", "CartPole-v1", "rlmesh-w1", "idle", BASELINE, 5.0),
    Target("2 workers vs gymnasium async", "CartPole-v1", "rlmesh-w2", "idle", BASELINE, 3.4),
    Target("1 worker vs gymnasium async, busy", "CartPole-v1", "rlmesh-w1", "busy", BASELINE, 2.0),
    Target("84x84x4 obs, 1 worker vs gymnasium async", "84x84x4 uint8", "rlmesh-w1", "idle", BASELINE, 3.0),
    Target("1 worker vs PufferLib's best", "CartPole-v1", "rlmesh-w1", "idle", "pufferlib-best", 0.85),
)


def pufferlib_available() -> bool:
    """Whether ``import pufferlib`` can work here (without importing it)."""
    return importlib.util.find_spec("pufferlib") is not None


# -- the rows: each yields a Timer for the conditions to call --------------------------------------


def _server_env() -> dict[str, str]:
    """The server's environment: this tree first on its path, so ``benchmarks._vector_envs`` imports."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


@contextlib.contextmanager
def rlmesh_row(
    workload: Workload, impl: Impl, address: str, batches: Sequence[Any], seconds: float, rounds: int
) -> Iterator[Timer]:
    """``rlmesh serve`` in a subprocess, stepped from here with ``rlmesh.numpy.RemoteVectorEnv``."""
    from rlmesh.numpy import RemoteVectorEnv

    # The idle timeout stops a server that outlives this process (a SIGKILL): nothing else would.
    extra = [*_demo.vector_serve_args(NUM_ENVS, impl.workers), "--idle-timeout", str(SETUP_TIMEOUT)]
    server, bound = _demo.start_server(
        workload.source, {}, address, quiet=True, extra=extra, env=_server_env(), cwd=str(ROOT)
    )
    try:
        envs = RemoteVectorEnv(bound, connect_timeout_seconds=30)
        try:
            yield lambda: _demo.vector_rates(envs, batches, seconds, rounds, seed=RESET_SEED)
        finally:
            envs.close()
    finally:
        _demo.stop_server(server)


@contextlib.contextmanager
def gymnasium_row(
    workload: Workload, impl: Impl, batches: Sequence[Any], seconds: float, rounds: int
) -> Iterator[Timer]:
    """gymnasium's ``AsyncVectorEnv`` (one spawned process per lane) or ``SyncVectorEnv``, from here."""
    import gymnasium

    factories = [workload.factory] * NUM_ENVS
    if impl.kind == "gymnasium-async":
        envs: Any = gymnasium.vector.AsyncVectorEnv(factories, shared_memory=True, context="spawn")
    else:
        envs = gymnasium.vector.SyncVectorEnv(factories)
    try:
        yield lambda: _demo.vector_rates(envs, batches, seconds, rounds, seed=RESET_SEED)
    finally:
        envs.close()


@contextlib.contextmanager
def pufferlib_row(
    workload: Workload, impl: Impl, batches: Sequence[Any], seconds: float, rounds: int
) -> Iterator[Timer]:
    """PufferLib's ``Multiprocessing`` backend: ``impl.workers`` processes, one batch of all lanes.

    Its public vector API: ``pufferlib.vector.make`` of a creator of
    ``pufferlib.emulation.GymnasiumPufferEnv``, then ``reset(seed=)`` and
    ``step(actions)``, as for gymnasium's vector envs.
    """
    import pufferlib.emulation  # type: ignore[import-not-found]
    import pufferlib.vector  # type: ignore[import-not-found]

    creator = functools.partial(pufferlib.emulation.GymnasiumPufferEnv, env_creator=workload.factory)
    envs = pufferlib.vector.make(
        creator,
        backend=pufferlib.vector.Multiprocessing,
        num_envs=NUM_ENVS,
        num_workers=impl.workers,
        batch_size=NUM_ENVS,
    )
    try:
        yield lambda: _demo.vector_rates(envs, batches, seconds, rounds, seed=RESET_SEED)
    finally:
        envs.close()  # terminates its workers; reap them too
        for proc in getattr(envs, "processes", []):
            proc.join(10)


# -- running and reporting ------------------------------------------------------------------------


def measure_row(
    runner: Runner,
    workload: str,
    impl: Impl,
    row: contextlib.AbstractContextManager[Timer],
    conditions: Sequence[str],
    seconds: float,
    rounds: int,
) -> None:
    """Set up one row, time it in every condition, print a JSON line per condition."""
    bound = SETUP_TIMEOUT + len(conditions) * (SETUP_TIMEOUT + 2 * seconds * rounds)
    size = WORKLOADS[workload].obs_bytes
    with deadline(bound, f"{workload} with {impl.name}"), row as timer:
        for condition in conditions:
            with busy_processes(CONDITIONS[condition]):
                rates = timer()
            median = statistics.median(rates)
            runner.emit(
                _labels(workload, impl, condition),
                {
                    **_facts(workload, impl, condition),
                    "status": "measured",
                    "env_steps_per_s_median": round(median, 1),
                    "mb_per_s": round(median * size / 1e6, 2),
                    "rounds": [round(rate, 1) for rate in rates],
                    "seconds": seconds,
                    "timed_s": seconds * len(rates),
                },
            )
            runner.note(f"  {workload:>14} {impl.name:<16} {condition:<4} {median:>10,.0f} env-steps/s")


def skip_row(runner: Runner, workload: str, impl: Impl, conditions: Sequence[str], why: str) -> None:
    """A JSON line per condition for a row that cannot run here (``status`` says why)."""
    for condition in conditions:
        runner.emit(
            _labels(workload, impl, condition),
            {**_facts(workload, impl, condition), "status": why, "env_steps_per_s_median": None},
        )
    runner.note(f"  {workload:>14} {impl.name:<16} {why}")


def _labels(workload: str, impl: Impl, condition: str) -> dict[str, Any]:
    """What names a row's JSON line (and its short-run warning)."""
    return {"kind": "row", "workload": workload, "impl": impl.name, "condition": condition}


def _facts(workload: str, impl: Impl, condition: str) -> dict[str, Any]:
    """What else a row's JSON line says about its setup."""
    return {
        "workers": impl.workers,
        "num_envs": NUM_ENVS,
        "busy_processes": CONDITIONS[condition],
        "obs_bytes": WORKLOADS[workload].obs_bytes,
    }


def _rates(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], float]:
    return {
        (r["workload"], r["impl"], r["condition"]): r["env_steps_per_s_median"]
        for r in records
        if r.get("kind") == "row" and r.get("env_steps_per_s_median")
    }


def evaluate_targets(
    records: Sequence[dict[str, Any]], conditions: Sequence[str]
) -> list[tuple[Target, float | None, str]]:
    """Each target's measured ratio (None when not measured) and its verdict: pass, FAIL or why not."""
    rate = _rates(records)
    skipped = {
        (r["workload"], r["impl"]): r["status"]
        for r in records
        if r.get("kind") == "row" and r.get("status") != "measured"
    }
    out: list[tuple[Target, float | None, str]] = []
    for target in TARGETS:
        if target.condition not in conditions:
            out.append((target, None, f"not measured ({target.condition} not run)"))
            continue
        mine = rate.get((target.workload, target.impl, target.condition))
        if target.against == "pufferlib-best":
            peers = [f"pufferlib-w{w}" for w in (1, 2)]
            theirs = max(
                (rate[key] for p in peers if (key := (target.workload, p, target.condition)) in rate),
                default=None,
            )
            why = skipped.get((target.workload, peers[0]), "not measured")
        else:
            theirs = rate.get((target.workload, target.against, target.condition))
            why = skipped.get((target.workload, target.against), "not measured")
        if not mine:
            out.append((target, None, skipped.get((target.workload, target.impl), "not measured")))
        elif not theirs:
            out.append((target, None, f"n/a ({target.against}: {why})"))
        else:
            ratio = mine / theirs
            out.append((target, ratio, "pass" if ratio >= target.required else "FAIL"))
    return out


def report(records: Sequence[dict[str, Any]], conditions: Sequence[str]) -> str:
    """The rate table: env-steps/s per condition side by side, each rlmesh row's ratio to the baseline."""
    rate = _rates(records)
    status = {
        (r["workload"], r["impl"]): r["status"]
        for r in records
        if r.get("kind") == "row" and r.get("status") != "measured"
    }
    rows_seen = list(dict.fromkeys((r["workload"], r["impl"]) for r in records if r.get("kind") == "row"))
    both = "idle" in conditions and "busy" in conditions
    headers = ["workload", "impl", "workers", *(f"env-steps/s {c}" for c in conditions)]
    if both:
        headers.append("busy/idle")
    headers += [f"x {BASELINE} ({' / '.join(conditions)})", "note"]
    table = []
    for workload, name in rows_seen:
        impl = IMPLS[name]
        workers = "in-process" if impl.workers in (None, 0) else str(impl.workers)
        values = [rate.get((workload, name, c)) for c in conditions]
        line = [workload, name, workers, *(f"{v:,.0f}" if v else "-" for v in values)]
        if both:
            idle, busy = rate.get((workload, name, "idle")), rate.get((workload, name, "busy"))
            line.append(f"{busy / idle:.2f}" if idle and busy else "-")
        ratios = []
        for condition, mine in zip(conditions, values, strict=True):
            theirs = rate.get((workload, BASELINE, condition))
            ratios.append(f"{mine / theirs:.2f}x" if mine and theirs else "-")
        line.append(" / ".join(ratios) if impl.kind == "rlmesh" else "")
        line.append(status.get((workload, name), ""))
        table.append(line)
    return markdown_table(headers, table)


def target_table(evaluated: Sequence[tuple[Target, float | None, str]]) -> str:
    """The targets: measured ratio, required ratio, verdict."""
    rows = [
        [
            t.label,
            t.workload,
            t.impl,
            t.condition,
            t.against,
            f"{ratio:.2f}x" if ratio is not None else "-",
            f">= {t.required:g}x",
            verdict,
        ]
        for t, ratio, verdict in evaluated
    ]
    headers = ["target", "workload", "impl", "condition", "against", "ratio", "required", "result"]
    return markdown_table(headers, rows)


def plot(records: Sequence[dict[str, Any]], conditions: Sequence[str], path: Path) -> bool:
    """A bar chart per workload of every measured row's env-steps/s by condition; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rate = _rates(records)
    workloads = list(dict.fromkeys(r["workload"] for r in records if r.get("kind") == "row"))
    fig, axes = plt.subplots(1, len(workloads), figsize=(6.5 * len(workloads), 4.8), squeeze=False)
    width = 0.8 / max(len(conditions), 1)
    for ax, workload in zip(axes[0], workloads, strict=True):
        names = [n for n in IMPLS if any((workload, n, c) in rate for c in conditions)]
        for i, condition in enumerate(conditions):
            values = [rate.get((workload, n, condition), 0.0) for n in names]
            bars = ax.bar([x + i * width for x in range(len(names))], values, width, label=condition)
            ax.bar_label(bars, labels=[f"{v / 1000:,.0f}k" if v else "" for v in values], fontsize=7)
        ax.set_xticks([x + width * (len(conditions) - 1) / 2 for x in range(len(names))], names)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.set_title(f"{workload}, {NUM_ENVS} lanes")
        ax.set_ylabel("env-steps/s (median)")
        ax.legend(title="condition")
    skipped = sorted(
        {f"{r['impl']}: {r['status']}" for r in records if r.get("status") not in (None, "measured")}
    )
    if skipped:
        fig.suptitle("not shown: " + "; ".join(skipped), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def action_batches(count: int = ACTION_BATCHES) -> list[Any]:
    """``count`` batches of ``NUM_ENVS`` random actions in {0, 1}, the same for every row and run."""
    import numpy as np

    rng = np.random.default_rng(ACTION_SEED)
    return list(rng.integers(0, 2, size=(count, NUM_ENVS), dtype=np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per row (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="short rounds, for a smoke test (noisy)")
    parser.add_argument("--workload", action="append", choices=list(WORKLOADS), help="repeatable")
    parser.add_argument("--impl", action="append", choices=list(IMPLS), help="repeatable; default all")
    parser.add_argument(
        "--conditions",
        type=parse_conditions,
        default=list(CONDITIONS),
        help="idle, busy (one extra process spinning on a core), or both: idle,busy (the default)",
    )
    parser.add_argument("--plot", default=str(DEFAULT_PLOT), help="where to write the PNG ('' for none)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON lines (no tables)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.2, 1
    workloads: list[str] = args.workload or list(WORKLOADS)
    impls = [IMPLS[name] for name in (args.impl or IMPLS)]
    conditions: list[str] = args.conditions
    seconds, rounds = args.seconds, args.rounds

    runner = Runner(
        "vector",
        args,
        extra_packages=["numpy", "gymnasium", "pufferlib"],
        short_hint="Run without --quick, or with more --seconds or --rounds.",
    )
    batches = action_batches()
    have_pufferlib = pufferlib_available()
    runner.note(
        f"bench_vector: {len(workloads)} workloads x {len(impls)} rows x {len(conditions)} conditions, "
        f"{rounds} x {seconds:g} s each"
    )
    with sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="rlmesh-bench-") as tmp:
        for n, workload in enumerate(workloads):
            spec = WORKLOADS[workload]
            for impl in impls:
                if impl.kind == "rlmesh":
                    address = f"unix://{tmp}/{n}-{impl.name}.sock"
                    row: contextlib.AbstractContextManager[Timer] = rlmesh_row(
                        spec, impl, address, batches, seconds, rounds
                    )
                elif impl.kind == "pufferlib":
                    if not have_pufferlib:
                        skip_row(runner, workload, impl, conditions, "not installed")
                        continue
                    row = pufferlib_row(spec, impl, batches, seconds, rounds)
                else:
                    row = gymnasium_row(spec, impl, batches, seconds, rounds)
                measure_row(runner, workload, impl, row, conditions, seconds, rounds)

    evaluated = evaluate_targets(runner.records, conditions)
    for target, ratio, verdict in evaluated:
        runner.emit(
            {"kind": "target", "target": target.label, "workload": target.workload, "impl": target.impl},
            {
                "condition": target.condition,
                "against": target.against,
                "ratio": round(ratio, 3) if ratio is not None else None,
                "required": target.required,
                "result": verdict,
            },
        )
    if not args.json_only:
        env = runner.env
        print()
        print(
            f"machine: {env.get('cpu_count')} cores, Python {env.get('python')}, {env.get('platform')}; "
            f"{NUM_ENVS} lanes, {seconds:g} s x {rounds} rounds per row, median env-steps/s; "
            "busy: one extra process spinning"
        )
        print(
            f"x {BASELINE}: an rlmesh row's env-steps/s over gymnasium's AsyncVectorEnv in the same "
            "condition and run; above 1 favours rlmesh."
        )
        print()
        print(report(runner.records, conditions))
        print()
        print("Targets (issue 10), ratios within this run:")
        print()
        print(target_table(evaluated))
    if args.plot:
        if plot(runner.records, conditions, Path(args.plot)):
            runner.note(f"wrote {args.plot}")
        else:
            runner.note('no plot: matplotlib is not installed (pip install "rlmesh[plot]")')
    runner.finish()


if __name__ == "__main__":
    main()
