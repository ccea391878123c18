"""The benchmark scripts run as documented, both as files and as modules.

These are smoke runs with tiny rounds: they check that the scripts work and
that their output is well formed, never the figures themselves (those are
measured by hand, on a quiet machine; see benchmarks/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def run_bench(args: list[str], cwd: str) -> tuple[list[dict[str, Any]], str]:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=100, cwd=cwd)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return rows, result.stdout


def test_bench_transports_as_a_file_from_another_directory(tmp_path) -> None:
    script = str(ROOT / "benchmarks" / "bench_transports.py")
    rows, out = run_bench(
        [script, "--workload", "CartPole-v1", "--seconds", "0.1", "--rounds", "1"], str(tmp_path)
    )
    cells = {row["transport"]: row for row in rows}
    assert {"rlmesh-shm", "rlmesh-unix", "rlmesh-tcp", "gymnasium-async-shm"} <= set(cells)
    for row in rows:
        assert row["workload"] == "CartPole-v1"
        assert row["steps_per_s_median"] > 0
        assert row["obs_bytes"] == 16  # four float32s
        assert row["env"]["cpu_count"] >= 1
    assert "| CartPole-v1 | rlmesh-shm" in out


def test_bench_shm_as_a_module() -> None:
    rows, out = run_bench(["-m", "benchmarks.bench_shm", "--quick"], str(ROOT))
    kinds = {(row["group"], row["transport"]) for row in rows}
    assert ("roundtrip", "rlmesh") in kinds and ("transfer", "socketpair") in kinds
    sizes = {row["size"] for row in rows if row["group"] == "transfer"}
    assert sizes == {16, 28 * 1024, 4 * 1024 * 1024}
    assert all(row["median_ns"] > 0 for row in rows)
    assert "| transfer" in out


def test_bench_obs_checks_as_a_file() -> None:
    rows, out = run_bench(
        [str(ROOT / "benchmarks" / "bench_obs_checks.py"), "off", "warn", "--repeats", "1"], str(ROOT)
    )
    cells = {(row["observation"], row["policy"]) for row in rows}
    assert ("CartPole f32[4]", "warn") in cells and ("4 MiB f32 Box(-1,1)", "off") in cells
    assert all(row["us_per_encode_median"] > 0 for row in rows)
    assert "| CartPole f32[4] |" in out
