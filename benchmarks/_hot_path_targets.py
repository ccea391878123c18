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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._harness import markdown_table

__all__ = ["HotPathTarget", "TARGETS", "evaluate", "table"]


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
