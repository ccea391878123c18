"""A small, generic benchmark harness shared by the scripts in ``benchmarks/``.

* timing with ``time.perf_counter_ns`` around each operation, after a warm-up,
  in several repeats whose length is calibrated to a target duration;
* summaries as median / p10 / p90 / p99 (never just a mean);
* one JSON line per measurement, each carrying the environment (Python,
  platform, CPU count, library versions) so runs can be compared later;
* a markdown table printer;
* a warning when a measurement ran for less than ``min_seconds`` (2 s by
  default): short runs are noisy;
* :func:`step_rates`, the one loop that times an env stepped as fast as it
  goes (rounds x seconds, steps/s per round), whatever the env is behind;
* :func:`busy_processes`, extra processes that keep cores busy for a block
  (the "busy machine" condition), always killed when the block ends.

This module imports the standard library only: ``_peer_client.py`` imports it
in the published package's interpreter, so that every cell, ours and the
peers', is timed by the same :func:`step_rates`.

Usage::

    runner = Runner("shm", args)          # args from add_common_args()
    samples = measure(op, repeats=5, target_s=0.4)
    runner.record({"group": "roundtrip", "transport": "x"}, samples, nbytes=8)
    with busy_processes(1):
        rates = step_rates(env, seconds=2.0, rounds=5)
    runner.emit({"transport": "x", "condition": "busy"}, {"steps_per_s_median": median(rates)})
    runner.finish()
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "Runner",
    "Samples",
    "SteppableEnv",
    "add_common_args",
    "busy_processes",
    "deadline",
    "environment",
    "markdown_table",
    "measure",
    "percentile",
    "step_rates",
    "summarize",
]

MIN_SECONDS = 2.0


# -- timing ---------------------------------------------------------------------------


@dataclass
class Samples:
    """Per-operation durations in ns, from every timed repeat."""

    ns: list[int] = field(default_factory=list)
    repeat_medians: list[float] = field(default_factory=list)
    timed_ns: int = 0  # sum of the timed operations
    wall_ns: int = 0  # wall time of the timed repeats (includes timer overhead)

    @property
    def count(self) -> int:
        return len(self.ns)


def _run(op: Callable[[], object], count: int) -> list[int]:
    clock = time.perf_counter_ns
    out = [0] * count
    for i in range(count):
        t0 = clock()
        op()
        out[i] = clock() - t0
    return out


def measure(
    op: Callable[[], object],
    *,
    repeats: int = 5,
    target_s: float = 0.4,
    warmup_s: float = 0.2,
    min_ops: int = 5,
    max_ops: int = 1_000_000,
) -> Samples:
    """Time ``op`` (one operation per call).

    A warm-up of about ``warmup_s`` also estimates the cost of one call; each
    of ``repeats`` repeats then runs enough calls to last about ``target_s``.
    """
    # Warm up, doubling the batch until it lasts long enough to estimate a rate.
    batch, spent, calls = 1, 0, 0
    start = time.perf_counter_ns()
    while True:
        spent += sum(_run(op, batch))
        calls += batch
        if time.perf_counter_ns() - start >= warmup_s * 1e9:
            break
        batch = min(batch * 2, max_ops)
    per_op = max(spent / calls, 1.0)
    count = int(min(max(target_s * 1e9 / per_op, min_ops), max_ops))
    samples = Samples()
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        ns = _run(op, count)
        samples.wall_ns += time.perf_counter_ns() - t0
        samples.timed_ns += sum(ns)
        samples.ns.extend(ns)
        samples.repeat_medians.append(percentile(sorted(ns), 50))
    return samples


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted values, linearly interpolated."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples: Samples) -> dict[str, float]:
    """Median, p10, p90, p99 and mean of the per-op durations, in ns."""
    values = sorted(samples.ns)
    medians = sorted(samples.repeat_medians)
    return {
        "median_ns": percentile(values, 50),
        "p10_ns": percentile(values, 10),
        "p90_ns": percentile(values, 90),
        "p99_ns": percentile(values, 99),
        "mean_ns": sum(values) / len(values) if values else math.nan,
        "repeat_median_spread": (medians[-1] - medians[0]) / medians[len(medians) // 2]
        if medians
        else math.nan,
        "ops": float(len(values)),
        "timed_s": samples.timed_ns / 1e9,
    }


@contextlib.contextmanager
def deadline(seconds: float, what: str = "benchmark step") -> Iterator[None]:
    """Raise TimeoutError in the main thread if the block runs longer than ``seconds``.

    Interrupts blocking system calls (a peer that died mid-exchange), so a
    benchmark never hangs. Main thread only; uses SIGALRM.
    """

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{what} did not finish within {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class SteppableEnv(Protocol):
    """What :func:`step_rates` drives: Gymnasium's single-env ``reset`` and ``step``."""

    def reset(self, *, seed: int | None = None) -> Any:
        """Start an episode."""

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, Any]:
        """Advance one step: (observation, reward, terminated, truncated, info)."""


def step_rates(
    env: SteppableEnv,
    seconds: float,
    rounds: int,
    *,
    warmup_steps: int = 50,
    warmup_s: float = 0.5,
) -> list[float]:
    """Step ``env`` as fast as it goes for ``rounds`` rounds of ``seconds`` each; steps/s per round.

    The one timing loop of the step-rate benchmarks: every cell (rlmesh over each
    transport, gymnasium's AsyncVectorEnv, and the published package in its own
    interpreter, through ``_peer_client.py``) is timed by it. Actions alternate
    0 and 1; an episode that ends is reset, inside the timed loop. A warm-up of
    ``warmup_steps`` steps comes first (segments mapped, spin budgets settled),
    cut short after ``warmup_s`` for an env that takes a second a step. The
    clock is read after every step (about 50 ns, under 0.5 % of the fastest
    cell), so a round overshoots ``seconds`` by one step at most.
    """
    clock = time.perf_counter
    step = env.step
    env.reset(seed=0)
    stop = clock() + warmup_s
    for i in range(warmup_steps):
        _, _, terminated, truncated, _ = step(i & 1)
        if terminated or truncated:
            env.reset()
        if clock() >= stop:
            break
    rates = []
    for _ in range(rounds):
        steps = 0
        start = now = clock()
        end = start + seconds
        while now < end:
            _, _, terminated, truncated, _ = step(steps & 1)
            steps += 1
            if terminated or truncated:
                env.reset()
            now = clock()
        rates.append(steps / (now - start))
    return rates


def process_cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU seconds of a process so far, all its threads (None: this process).

    Another process's comes from ``/proc/<pid>/stat`` (Linux), this one's from
    ``resource.getrusage``.
    """
    if pid is None or pid == os.getpid():
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CountingEnv:
    """Counts the steps ``step_rates`` takes, so CPU time can be divided by them."""

    def __init__(self, env: SteppableEnv) -> None:
        self.env = env
        self.steps = 0

    def reset(self, *, seed: int | None = None) -> Any:
        return self.env.reset(seed=seed)

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, Any]:
        self.steps += 1
        return self.env.step(action)


def step_rates_with_cpu(
    env: SteppableEnv, seconds: float, rounds: int, peer_pids: Sequence[int]
) -> tuple[list[float], float, float]:
    """:func:`step_rates`, plus the CPU per step of this process and of ``peer_pids`` together.

    Returns ``(steps/s per round, this process's user+sys us per step, the
    peers' user+sys us per step)``, the CPU over every step taken (warm-up
    included). The peers are the serving side: rlmesh's server, or
    AsyncVectorEnv's worker.
    """
    counting = CountingEnv(env)
    mine, theirs = process_cpu_seconds(), sum(process_cpu_seconds(pid) for pid in peer_pids)
    rates = step_rates(counting, seconds, rounds)
    mine = process_cpu_seconds() - mine
    theirs = sum(process_cpu_seconds(pid) for pid in peer_pids) - theirs
    steps = max(counting.steps, 1)
    return rates, mine / steps * 1e6, theirs / steps * 1e6


#: The program each busy process runs (a spin loop that exits when its parent goes).
BUSY_SCRIPT = Path(__file__).resolve().with_name("_busy.py")


@contextlib.contextmanager
def busy_processes(count: int, *, start_timeout: float = 30.0) -> Iterator[list[int]]:
    """``count`` extra processes, each spinning on a core, for the length of the block; yields their pids.

    Each runs ``_busy.py`` in this interpreter and is spinning before the block
    starts. They are killed and reaped when the block ends, whether it ends
    normally, on an error or on Ctrl-C; and each also exits by itself once this
    process is gone, so not even a SIGKILL of the benchmark leaves one behind.
    """
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            proc = subprocess.Popen(
                [sys.executable, str(BUSY_SCRIPT), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
            )
            procs.append(proc)
            assert proc.stdout is not None
            poller = select.poll()
            poller.register(proc.stdout, select.POLLIN)
            if not poller.poll(start_timeout * 1000) or not proc.stdout.readline():
                raise RuntimeError(f"a busy process did not start within {start_timeout:g}s")
        yield [proc.pid for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` for the block, so that ``finally`` clauses still run.

    A benchmark killed with SIGTERM then stops its busy processes and servers as
    on Ctrl-C. Main thread only.
    """

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- environment and output -------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(extra_packages: Sequence[str] = ()) -> dict[str, Any]:
    """Where and with what the benchmark ran."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    cpu_model = None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "rlmesh": _version("rlmesh"),
    }
    for name in extra_packages:
        env[name] = _version(name)
    return env


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_looks_numeric(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    sep = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if num else ":" + "-" * (w + 1)
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(list(headers)), sep, *(line(r) for r in cells)])


def _looks_numeric(text: str) -> bool:
    head = text.split(" ", 1)[0].replace(",", "").rstrip("x%")
    try:
        float(head)
    except ValueError:
        return text in ("", "-", "n/a")
    return True


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """--quick, --json-only, --repeats."""
    parser.add_argument("--quick", action="store_true", help="short run (noisy; for smoke tests)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON lines (no table)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")


class Runner:
    """Collects measurements, prints JSON lines as they come, and warns about short runs."""

    def __init__(
        self,
        bench: str,
        args: argparse.Namespace,
        *,
        extra_packages: Sequence[str] = (),
        min_seconds: float = MIN_SECONDS,
        short_hint: str = "Run without --quick, or with more --repeats.",
    ) -> None:
        self.bench = bench
        self.quick = bool(args.quick)
        self.json_only = bool(args.json_only)
        self.repeats = getattr(args, "repeats", None) or (3 if self.quick else 5)
        self.target_s = 0.08 if self.quick else 0.5
        self.warmup_s = 0.05 if self.quick else 0.2
        self.min_seconds = min_seconds
        self.short_hint = short_hint
        self.env = environment(extra_packages)
        self.records: list[dict[str, Any]] = []
        self.short: list[str] = []
        self.started = time.monotonic()

    def measure(self, op: Callable[[], object], **overrides: Any) -> Samples:
        """:func:`measure` with this run's repeats, target and warm-up."""
        kwargs: dict[str, Any] = {
            "repeats": self.repeats,
            "target_s": self.target_s,
            "warmup_s": self.warmup_s,
        }
        kwargs.update(overrides)
        return measure(op, **kwargs)

    def record(
        self, labels: dict[str, Any], samples: Samples, *, nbytes: int | None = None
    ) -> dict[str, Any]:
        """Summarize, print one JSON line, remember it for the table."""
        values: dict[str, Any] = summarize(samples)
        if nbytes is not None:
            values["bytes"] = nbytes
            seconds = samples.timed_ns / 1e9
            values["throughput_MBps"] = nbytes * samples.count / seconds / 1e6 if seconds else math.nan
        return self.emit(labels, values)

    def emit(self, labels: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """Print one JSON line of ``labels`` and ``values`` with the environment; remember it.

        A measurement whose ``timed_s`` is under ``min_seconds`` counts as short
        (see :meth:`finish`).
        """
        rec: dict[str, Any] = {"bench": self.bench, **labels, **values}
        rec["env"] = self.env
        rec["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if rec.get("timed_s", math.inf) < self.min_seconds:
            self.short.append(_label(labels))
        self.records.append(rec)
        print(json.dumps(rec, sort_keys=True), flush=True)
        return rec

    def note(self, message: str) -> None:
        """A human-readable remark on stderr (never mixed into the JSON lines)."""
        print(message, file=sys.stderr, flush=True)

    def finish(self) -> None:
        """Warn about measurements that ran for too short a time."""
        elapsed = time.monotonic() - self.started
        if self.short:
            self.note(
                f"warning: {len(self.short)} of {len(self.records)} measurements were timed for "
                f"less than {self.min_seconds:g}s each ({', '.join(self.short[:4])}"
                f"{', ...' if len(self.short) > 4 else ''}); their numbers are noisy. " + self.short_hint
            )
        self.note(f"{self.bench}: {len(self.records)} measurements in {elapsed:.1f}s")


def _label(labels: dict[str, Any]) -> str:
    return "/".join(str(v) for v in labels.values())
