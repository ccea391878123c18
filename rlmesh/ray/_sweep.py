"""Evaluation sweeps on a fleet: each seed run exactly once, results in seed order, whatever dies.

The driver keeps the seeds in chunks on its own queue (not Ray's ``ActorPool``,
which neither replaces a dead actor nor retries its work) and gives each live
host one chunk at a time. A host runs its chunk with ``Model.run`` against its
own server (over shared memory: no network per step), the model built once per
host from the factory, which travels through Ray once (``ray.put``). A chunk
whose host died is put back at the front of the queue and counted; results are
kept by seed index, so each seed counts once and they come back in seed order
whichever host ran them. Runs are seeded, so a chunk run again gives the same
episodes.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError

from .._results import EpisodeResult, Progress, RunResult
from ..errors import FleetError, OperationTimeout
from ._fleet import EnvFleet

__all__ = ["run"]


def _check_count(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return value


def run(
    model_factory: Callable[[], Any],
    env: Any = None,
    *,
    seeds: Sequence[int],
    fleet: EnvFleet | None = None,
    chunk_size: int = 16,
    max_attempts: int = 3,
    max_episode_steps: int | None = None,
    hosts: int | None = None,
    envs_per_host: int = 1,
    timeout: float | None = None,
    progress: bool | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Run one seeded episode per seed on a fleet's hosts; every seed exactly once, in seed order.

    Args:
        model_factory: a zero-argument callable returning what ``rlmesh.run``
            takes as a model (a ``rlmesh.numpy.Model``, a predict callable...);
            called once per host (cloudpickled once, through Ray).
        env: what to serve when no ``fleet`` is given (a Gymnasium id or an env
            factory); with a fleet, None or the fleet's own source.
        seeds: the episodes' seeds (ints). Episode ``i`` of the result has seed ``seeds[i]``.
        fleet: a started :class:`EnvFleet` to run on (left running). None: a
            fleet is started and shut down around the sweep.
        hosts: without a fleet, how many hosts (default: one per alive Ray node).
        envs_per_host: without a fleet, the lanes of each host.
        chunk_size: seeds per chunk handed to a host.
        max_attempts: how often one chunk may be started; a chunk whose host
            died that often raises FleetError.
        max_episode_steps: cut every episode after this many steps (truncated).
        timeout: seconds for the whole sweep (None: no limit).
        progress: show a progress line on stderr (None: when stderr is a
            terminal, for sweeps longer than two seconds).
        on_progress: called in the driver with ``(episodes done, total)``
            after every chunk.

    Returns:
        A :class:`~rlmesh.models.RunResult` whose episodes are in seed order,
        ``index`` = position in ``seeds``.

    Raises:
        ValueError: bad counts, or an ``env`` other than the fleet's source.
        FleetError: a chunk failed ``max_attempts`` times because its host died,
            or every host of the fleet is retired.
        OperationTimeout: the sweep did not finish within ``timeout``.
        Exception: whatever the model or the env raised on a host (as Ray's
            ``RayTaskError``, which is also an instance of the original type).
    """
    plan = [int(s) for s in seeds]
    _check_count("chunk_size", chunk_size, 1)
    _check_count("max_attempts", max_attempts, 1)
    _check_count("envs_per_host", envs_per_host, 1)
    if fleet is not None:
        if env is not None and env != fleet.source:
            raise ValueError("env must be None or the fleet's own source when a fleet is given")
        return _sweep(
            fleet,
            model_factory,
            plan,
            chunk_size,
            max_attempts,
            max_episode_steps,
            timeout,
            progress,
            on_progress,
        )
    if env is None:
        raise ValueError("run() needs an env (a Gymnasium id or a factory) or a fleet")
    if not ray.is_initialized():
        raise RuntimeError("rlmesh.ray.run() needs Ray: call ray.init() first")
    count = hosts if hosts is not None else len([n for n in ray.nodes() if n["Alive"]])  # type: ignore[no-untyped-call]
    _check_count("hosts", count, 1)
    with EnvFleet(env, num_envs=count * envs_per_host, hosts=count) as own:
        return _sweep(
            own,
            model_factory,
            plan,
            chunk_size,
            max_attempts,
            max_episode_steps,
            timeout,
            progress,
            on_progress,
        )


def _sweep(
    fleet: EnvFleet,
    model_factory: Callable[[], Any],
    plan: list[int],
    chunk_size: int,
    max_attempts: int,
    max_episode_steps: int | None,
    timeout: float | None,
    progress: bool | None,
    on_progress: Callable[[int, int], None] | None,
) -> RunResult:
    deadline = None if timeout is None else time.monotonic() + timeout
    queue: deque[int] = deque(range(0, len(plan), chunk_size))
    attempts: dict[int, int] = {}
    results: list[EpisodeResult | None] = [None] * len(plan)
    done = steps = 0
    sweep = secrets.token_hex(6)
    factory = ray.put(model_factory)
    handles = fleet.handles()
    pending: dict[Any, tuple[int, int]] = {}  # ref -> (host, chunk start)
    busy: set[int] = set()
    display = Progress(None, progress, len(plan))
    try:
        while done < len(plan):
            if deadline is not None and time.monotonic() >= deadline:
                raise OperationTimeout(
                    f"the sweep did not finish within {timeout} s ({done} of {len(plan)} done)",
                    timeout=timeout,
                )
            infos = fleet.hosts()
            for info in infos:
                if queue and info.state == "live" and info.index not in busy:
                    start = queue.popleft()
                    attempts[start] = attempts.get(start, 0) + 1
                    chunk = plan[start : start + chunk_size]
                    ref = handles[info.index].run_chunk.remote(sweep, factory, chunk, max_episode_steps)
                    pending[ref] = (info.index, start)
                    busy.add(info.index)
            if not pending:
                if all(i.state == "retired" for i in infos):
                    raise FleetError(
                        "every host of the fleet is retired: " + "; ".join(str(i.error) for i in infos)
                    )
                time.sleep(0.05)  # hosts restarting: wait for one to come back
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
            for ref in ready:
                host, start = pending.pop(ref)
                busy.discard(host)
                try:
                    rows = ray.get(ref)
                except RayActorError as exc:
                    # The host died with the chunk: run it again (first), elsewhere or after its restart.
                    if attempts[start] >= max_attempts:
                        raise FleetError(
                            f"the chunk of seeds from index {start} failed {attempts[start]} times "
                            f"(max_attempts={max_attempts}): its host died each time"
                        ) from exc
                    queue.appendleft(start)
                    continue
                for offset, row in enumerate(rows):
                    index = start + offset
                    if results[index] is None:
                        done += 1
                        steps += int(row[0])
                    results[index] = EpisodeResult(
                        index=index,
                        seed=plan[index],
                        steps=int(row[0]),
                        reward=float(row[1]),
                        terminated=bool(row[2]),
                        truncated=bool(row[3]),
                        success=None if row[4] is None else bool(row[4]),
                        duration_s=float(row[5]),
                        predict_ms=float(row[6]),
                        step_ms=float(row[7]),
                    )
                display.update(done, steps)
                if on_progress is not None:
                    on_progress(done, len(plan))
    finally:
        display.finish(done, steps)
        for ref in pending:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - best effort: a finished or lost task
                pass
        for handle in handles:
            handle.forget.remote(sweep)
    episodes = tuple(r for r in results if r is not None)
    assert len(episodes) == len(plan)
    return RunResult(episodes)
