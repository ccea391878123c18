"""Server-side cost of encoding one observation, with and without the value checks.

The server encodes every observation it sends, and with the ``warn`` or
``strict`` validation policy (``RLMESH_VALIDATION_POLICY``) it also checks the
values against the observation space. This script times that encode step
alone, in-process, for a few observation shapes, under each policy; the
difference between ``warn`` and ``off`` is what the checks cost per step.

Policies are timed in turn within each repeat (so drift hits them alike) and
the median per call is reported. Run on an idle machine:
``python -m benchmarks.bench_obs_checks [--repeats 15] [off warn]``.
Against a tree without the checks (an older rlmesh on ``PYTHONPATH``) every
policy times the plain encoder.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any

import numpy as np

from rlmesh import _adapter, spaces


class _Scratch(_adapter.Sink):
    """A sink writing into one reused buffer, so only the encoder is timed."""

    def __init__(self) -> None:
        self.buffer = bytearray(8 << 20)

    def target(self, shape: tuple[int, ...], dtype: Any) -> tuple[Any, memoryview]:
        nbytes = math.prod(shape) * dtype.itemsize
        return None, memoryview(self.buffer)[:nbytes]


class _Env:
    metadata: dict[str, Any] = {}

    def __init__(self, space: Any) -> None:
        self.observation_space = space
        self.action_space = spaces.Discrete(2)

    def reset(self, **_: Any) -> Any:
        return None

    def step(self, action: Any) -> Any:
        return None

    def close(self) -> None:
        pass


def _encoder(space: Any, policy: str) -> Any:
    try:
        adapter = _adapter.EnvAdapter(_Env(space), validation=policy)
    except TypeError:  # an rlmesh without value checks
        adapter = _adapter.EnvAdapter(_Env(space))
        return lambda obs, sink: adapter.encode_obs(obs, sink)
    return lambda obs, sink: adapter.encode_obs_info(obs, {}, sink)


def _cases() -> dict[str, tuple[Any, Any]]:
    cartpole_high = np.array([4.8, np.inf, 0.41887903, np.inf], np.float32)
    rng = np.random.default_rng(0)
    return {
        "CartPole f32[4]": (
            spaces.Box(-cartpole_high, cartpole_high, (4,), "float32"),
            np.array([0.01, -0.02, 0.03, 0.04], np.float32),
        ),
        "84x84x4 u8 [0,255]": (spaces.Box(0, 255, (84, 84, 4), "uint8"), np.zeros((84, 84, 4), np.uint8)),
        "4 MiB f32 Box(-1,1)": (
            spaces.Box(-1.0, 1.0, (1024, 1024), "float32"),
            rng.uniform(-1, 1, (1024, 1024)).astype(np.float32),
        ),
        "4 MiB f32 Box(0,inf)": (
            spaces.Box(0.0, np.inf, (1024, 1024), "float32"),
            rng.uniform(0, 1, (1024, 1024)).astype(np.float32),
        ),
        "4 MiB f32 unbounded": (
            spaces.Box(-np.inf, np.inf, (1024, 1024), "float32"),
            rng.uniform(-1, 1, (1024, 1024)).astype(np.float32),
        ),
    }


def main() -> None:
    """Time every case under every policy; print one JSON line per cell, then a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="*", default=["off", "warn"])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    sink = _Scratch()
    table = ["| observation | " + " | ".join(f"{p} (µs)" for p in args.policies) + " |"]
    table.append("|---|" + "---:|" * len(args.policies))
    for name, (space, obs) in _cases().items():
        encoders = {policy: _encoder(space, policy) for policy in args.policies}
        calls = 4000 if obs.nbytes < 1 << 20 else 40
        samples: dict[str, list[float]] = {policy: [] for policy in args.policies}
        for _ in range(3):
            for encode in encoders.values():
                encode(obs, sink)
        for _ in range(args.repeats):
            for policy, encode in encoders.items():
                start = time.perf_counter_ns()
                for _ in range(calls):
                    encode(obs, sink)
                samples[policy].append((time.perf_counter_ns() - start) / calls / 1e3)
        for policy in args.policies:
            row = {
                "bench": "obs_checks",
                "observation": name,
                "obs_bytes": int(obs.nbytes),
                "policy": policy,
                "us_per_encode_median": round(statistics.median(samples[policy]), 3),
                "repeats": args.repeats,
            }
            print(json.dumps(row), flush=True)
        cells = " | ".join(f"{statistics.median(samples[p]):.2f}" for p in args.policies)
        table.append(f"| {name} | {cells} |")
    print("\n".join(table))


if __name__ == "__main__":
    main()
