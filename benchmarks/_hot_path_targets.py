"""Issue 13's targets for ``bench_transports``: the single-env hot path against its peers, in one run.

Every target is a ratio of two rows of the same run (never an absolute
figure, which depends on the machine):

* CartPole over shared memory, idle: rlmesh's steps/s at least 6x gymnasium's
  ``AsyncVectorEnv`` with one worker (``gymnasium-async-shm``);
* the same with one busy process on the machine: at least 1.5x;
* CPU per step with spinning off and one busy process (client plus server,
  user+sys, env step included): at most 0.6x AsyncVectorEnv's main plus worker;
* the JAX client within 1.5x of the NumPy client's steps/s at 4 KiB
  observations (``rlmesh-shm-jax`` over ``rlmesh-shm``: at least 1/1.5).

A target whose rows are missing (a ``--workload`` or ``--conditions`` choice
left them out) reads "not measured".

The JAX target has a ceiling no client code can lift: every observation
becomes a new ``jax.Array``, and jaxlib's own creation and release of one
costs a fixed few microseconds, paid on top of the NumPy client's whole
step. :func:`jax_array_floor` measures that cost in this process (the
cheapest entry point rlmesh uses, against ``jnp.asarray``'s public path),
and :func:`jax_ceiling` turns it into the best JAX/NumPy ratio any JAX
client could reach against this run's NumPy row.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._harness import markdown_table

__all__ = ["HotPathTarget", "TARGETS", "evaluate", "jax_array_floor", "jax_ceiling", "table"]


@dataclass(frozen=True)
class HotPathTarget:
    """One target: ``mine`` over ``theirs`` (steps/s, or CPU per step when ``cpu``), bounded."""

    name: str
    workload: str
    mine: str
    theirs: str
    condition: str
    bound: float
    #: True: CPU per step (client + server), where lower is better and ``bound`` is a maximum.
    cpu: bool = False

    @property
    def required(self) -> str:
        """The bound as the table shows it."""
        return f"<= {self.bound:g}x" if self.cpu else f">= {self.bound:.3g}x"


TARGETS = (
    HotPathTarget("CartPole over shm, idle", "CartPole-v1", "rlmesh-shm", "gymnasium-async-shm", "idle", 6.0),
    HotPathTarget("CartPole over shm, busy", "CartPole-v1", "rlmesh-shm", "gymnasium-async-shm", "busy", 1.5),
    HotPathTarget(
        "CPU per step, spin off, busy",
        "CartPole-v1",
        "rlmesh-shm-nospin",
        "gymnasium-async-shm",
        "busy",
        0.6,
        cpu=True,
    ),
    HotPathTarget("JAX client vs NumPy client", "4 KiB obs", "rlmesh-shm-jax", "rlmesh-shm", "idle", 1 / 1.5),
)


def _value(
    records: Sequence[dict[str, Any]], workload: str, transport: str, condition: str, cpu: bool
) -> float | None:
    for r in records:
        if r.get("kind") != "row" or (r["workload"], r["transport"], r["condition"]) != (
            workload,
            transport,
            condition,
        ):
            continue
        if not cpu:
            value = r.get("steps_per_s_median")
            return float(value) if value else None
        client, server = r.get("cpu_client_us_per_step"), r.get("cpu_server_us_per_step")
        return float(client + server) if client and server else None
    return None


def evaluate(records: Sequence[dict[str, Any]]) -> list[tuple[HotPathTarget, float | None, str]]:
    """Each target's ``(target, ratio, verdict)`` from the run's row records."""
    out: list[tuple[HotPathTarget, float | None, str]] = []
    for target in TARGETS:
        mine = _value(records, target.workload, target.mine, target.condition, target.cpu)
        theirs = _value(records, target.workload, target.theirs, target.condition, target.cpu)
        if mine is None or theirs is None:
            out.append((target, None, "not measured"))
            continue
        ratio = mine / theirs
        met = ratio <= target.bound if target.cpu else ratio >= target.bound
        out.append((target, ratio, "pass" if met else "FAIL"))
    return out


def table(evaluated: Sequence[tuple[HotPathTarget, float | None, str]]) -> str:
    """The targets as a markdown table: rows compared, measured ratio, bound, verdict."""
    rows = [
        [
            target.name,
            target.workload,
            f"{target.mine}{' CPU/step' if target.cpu else ''}",
            target.theirs,
            target.condition,
            f"{ratio:.2f}x" if ratio is not None else "-",
            target.required,
            verdict,
        ]
        for target, ratio, verdict in evaluated
    ]
    return markdown_table(
        ["target", "workload", "row", "against", "condition", "ratio", "required", "result"], rows
    )


def _per_call_us(op: Callable[[], object], calls: int, rounds: int) -> float:
    """The median over ``rounds`` of ``op``'s wall time per call, in microseconds, after a warm-up."""
    for _ in range(min(calls, 2000)):
        op()
    per_call = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            op()
        per_call.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(per_call)


def jax_array_floor(nbytes: int = 4096, calls: int = 20000, rounds: int = 5) -> dict[str, float] | None:
    """What turning ``nbytes`` of observation into a ``jax.Array`` costs in this process, in us per array.

    Each call makes a fresh ``bytearray`` of the bytes (as the step codec's
    client does) and turns it into an array, which the next call's result
    frees, so create and release are both counted:

    * ``jax_importer_us``: rlmesh's bytes importer (jaxlib's ``batched_device_put``
      with every fixed argument built once: the cheapest path rlmesh knows);
    * ``jax_asarray_us``: ``jnp.asarray``, the public path;
    * ``numpy_us``: the NumPy client's ``numpy.ndarray`` over the bytes.

    None where jax is not installed or the importer is unavailable.
    """
    try:
        import jax.numpy as jnp
        import numpy as np

        from rlmesh.backends.jax import bytes_importer
    except ImportError:
        return None
    shape = (nbytes,)
    make = bytes_importer(shape, "uint8")
    if make is None:
        return None
    source = bytes(range(256)) * (nbytes // 256) + bytes(nbytes % 256)
    dtype, ndarray, asarray = np.dtype(np.uint8), np.ndarray, jnp.asarray
    return {
        "jax_importer_us": _per_call_us(lambda: make(bytearray(source)), calls, rounds),
        "jax_asarray_us": _per_call_us(
            lambda: asarray(ndarray(shape, dtype, bytearray(source))), calls // 10, rounds
        ),
        "numpy_us": _per_call_us(lambda: ndarray(shape, dtype, bytearray(source)), calls, rounds),
    }


def jax_ceiling(records: Sequence[dict[str, Any]], floor: dict[str, float]) -> tuple[float, float] | None:
    """``(NumPy client's us per step, the best JAX/NumPy ratio)`` at 4 KiB, idle, from this run.

    A JAX client pays at least the importer's cost on top of the NumPy
    client's step (less the NumPy array it no longer makes), so its ratio
    cannot exceed ``t / (t + importer - numpy)``. None without the NumPy row.
    """
    rate = _value(records, "4 KiB obs", "rlmesh-shm", "idle", False)
    if not rate:
        return None
    step_us = 1e6 / rate
    extra = max(floor["jax_importer_us"] - floor["numpy_us"], 0.0)
    return step_us, step_us / (step_us + extra)
