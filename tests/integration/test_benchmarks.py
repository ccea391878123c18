"""The benchmark scripts run as documented, both as files and as modules.

These are smoke runs with tiny rounds: they check that the scripts work and
that their output is well formed, never the figures themselves (those are
measured by hand, on a quiet machine; see benchmarks/README.md).

bench_transports' sandbox rows need a Docker daemon and build an image (the
cold start, a fresh content hash, every run): their smoke run is a test of its
own (about 35 s on the 2-core VM when the sandbox tests have built the rows'
image in this checkout, the same inputs and so the same image; about a
minute when it builds that image too), skipped without a daemon like the
sandbox tests. The other bench_transports runs pass
``--no-sandbox``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.conftest import ROOT, docker_or_skip

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def run_bench(
    args: list[str], cwd: str, *, timeout: float = 100, env: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], str]:
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return rows, result.stdout


def test_bench_transports_as_a_file_from_another_directory(tmp_path) -> None:
    script = str(ROOT / "benchmarks" / "bench_transports.py")
    rows, out = run_bench(
        [script, "--workload", "CartPole-v1", "--seconds", "0.1", "--rounds", "1", "--no-sandbox"],
        str(tmp_path),
    )
    targets = {row["target"]: row for row in rows if row["kind"] == "target"}
    rows = [row for row in rows if row["kind"] == "row"]
    cells = {(row["transport"], row["condition"]): row for row in rows}
    transports = {"rlmesh-shm", "rlmesh-unix", "rlmesh-tcp", "gymnasium-async-shm", "gymnasium-async-pipe"}
    # Issue 13's targets: the CartPole ones measured (a verdict either way), the JAX one not asked for.
    for name in ("CartPole over shm, idle", "CartPole over shm, busy", "CPU per step, spin off, busy"):
        assert targets[name]["result"] in ("pass", "FAIL") and targets[name]["ratio"] > 0, targets[name]
    assert "JAX client vs NumPy client" not in targets  # its rows were not asked for
    assert re.search(r"\| JAX client vs NumPy client .*\| not measured \|", out)
    assert "Hot-path targets (issue 13)" in out
    # Every cell, measured idle and with one busy process (the default: both).
    assert {(t, c) for t in transports for c in ("idle", "busy")} <= set(cells)
    for row in rows:
        assert row["bench"] == "transports"
        assert row["workload"] == "CartPole-v1"
        assert row["busy_processes"] == (1 if row["condition"] == "busy" else 0)
        assert row["steps_per_s_median"] > 0 and len(row["rounds"]) == 1
        assert row["obs_bytes"] == 16  # four float32s
        assert row["env"]["cpu_count"] >= 1
    header = next(line for line in out.splitlines() if line.startswith("| workload"))
    assert "steps/s idle" in header and "steps/s busy" in header and "busy/idle" in header
    assert "x gymnasium-async-shm" in header
    shm_row = next(line for line in out.splitlines() if line.startswith("| CartPole-v1 | rlmesh-shm"))
    assert shm_row.count(" / ") == 2  # a ratio per condition against each gymnasium peer


def test_bench_transports_as_a_module_in_one_condition() -> None:
    rows, out = run_bench(
        [
            "-m",
            "benchmarks.bench_transports",
            "--quick",
            "--workload",
            "28 KiB obs",
            "--conditions",
            "busy",
            "--no-gymnasium",
            "--no-sandbox",
            "--json-only",
        ],
        str(ROOT),
    )
    assert {(row["transport"], row["condition"]) for row in rows} == {
        (f"rlmesh-{transport}{spin}", "busy")
        for transport in ("shm", "unix", "tcp")
        for spin in ("", "-nospin")  # spinning on and off (--spin on,off, the default)
    }
    assert all(row["cpu_client_us_per_step"] > 0 and row["cpu_server_us_per_step"] > 0 for row in rows)
    assert all(row["obs_bytes"] == 28 * 1024 and row["seconds"] == 0.3 for row in rows)
    assert "| workload" not in out  # --json-only: no table


def test_bench_transports_jax_rows_beside_the_numpy_client() -> None:
    pytest.importorskip("jax")
    args = ["-m", "benchmarks.bench_transports", "--quick", "--workload", "4 KiB obs", "--conditions", "idle"]
    args += ["--spin", "on", "--no-gymnasium", "--no-sandbox"]
    rows, out = run_bench(args, str(ROOT))
    cells = {row["transport"]: row for row in rows if row["kind"] == "row"}
    assert {"rlmesh-shm", "rlmesh-shm-jax"} <= set(cells)
    assert cells["rlmesh-shm-jax"]["obs_bytes"] == 4 * 1024
    assert cells["rlmesh-shm-jax"]["steps_per_s_median"] > 0
    jax = next(
        row for row in rows if row["kind"] == "target" and row["target"] == "JAX client vs NumPy client"
    )
    ratio = cells["rlmesh-shm-jax"]["steps_per_s_median"] / cells["rlmesh-shm"]["steps_per_s_median"]
    assert jax["ratio"] == pytest.approx(ratio, abs=1e-3) and jax["result"] in ("pass", "FAIL")
    assert "| 4 KiB obs   | rlmesh-shm-jax" in out
    # jaxlib's own cost of an array, measured in the same run, and the ceiling it puts on the ratio.
    floor = next(row for row in rows if row["kind"] == "floor")
    assert 0 < floor["numpy_us"] < floor["jax_importer_us"] < floor["jax_asarray_us"]
    step_us = 1e6 / cells["rlmesh-shm"]["steps_per_s_median"]
    best = step_us / (step_us + floor["jax_importer_us"] - floor["numpy_us"])
    assert f"no JAX client can pass {best:.2f}x of its steps/s" in out


#: The quick sandbox smoke run: both sandboxed workloads, idle only, no peers, spinning on only.
SANDBOX_SMOKE = ["-m", "benchmarks.bench_transports", "--quick", "--conditions", "idle", "--no-gymnasium"]
SANDBOX_SMOKE += ["--spin", "on", "--workload", "CartPole-v1", "--workload", "4 MiB obs"]


@pytest.mark.timeout(600)
def test_bench_transports_sandbox_rows_targets_and_start_times() -> None:
    api = docker_or_skip()
    try:
        base = os.environ.get("RLMESH_SANDBOX_BASE_IMAGE", "rlmesh-base:bookworm")
        try:
            api.images.get(base)
        except Exception:
            message = f"the sandbox base image {base} is missing: run `rlmesh sandbox base-image`"
            if os.environ.get("RLMESH_REQUIRE_DOCKER") == "1":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        images = {tag for image in api.images.list(name="rlmesh-sandbox") for tag in image.tags}
    finally:
        api.close()
    rows, out = run_bench(SANDBOX_SMOKE, str(ROOT), timeout=540)
    cells = {(r["workload"], r["transport"]): r for r in rows if r["kind"] == "row"}
    for workload in ("CartPole-v1", "4 MiB obs"):
        row = cells[(workload, "sandbox-shm")]
        host = cells[(workload, "rlmesh-shm")]
        assert row["condition"] == "idle" and row["steps_per_s_median"] > 0 and len(row["rounds"]) == 1
        assert row["obs_bytes"] == host["obs_bytes"]  # the same env as the host rows
        assert row["data_plane"] == "shm" and row["image"].startswith("rlmesh-sandbox:")
        assert row["cpu_client_us_per_step"] > 0 and row["cpu_server_us_per_step"] > 0  # the container's
    # One image for both workloads (the second start reused it).
    assert cells[("CartPole-v1", "sandbox-shm")]["image"] == cells[("4 MiB obs", "sandbox-shm")]["image"]
    assert cells[("4 MiB obs", "sandbox-shm")]["built"] is False
    starts = [r for r in rows if r["kind"] == "start"]
    cold = [r for r in starts if r["start"] == "cold"]
    warm = [r for r in starts if r["start"] == "warm"]
    assert len(cold) == 1 and cold[0]["built"] is True and cold[0]["seconds"] > 0
    assert cold[0]["image"] != cells[("CartPole-v1", "sandbox-shm")]["image"]  # a fresh content hash
    assert len(warm) == 1 and warm[0]["built"] is False and 0 < warm[0]["seconds"] < cold[0]["seconds"]
    assert warm[0]["image"] == cells[("CartPole-v1", "sandbox-shm")]["image"]
    targets = {r["workload"]: r for r in rows if r["kind"] == "target"}
    assert set(targets) == {"CartPole-v1", "4 MiB obs"}
    for workload, target in targets.items():
        ratio = (
            cells[(workload, "sandbox-shm")]["steps_per_s_median"]
            / cells[(workload, "rlmesh-shm")]["steps_per_s_median"]
        )
        assert target["ratio"] == pytest.approx(ratio, rel=1e-2) and target["required"] == 0.8
        assert target["result"] == ("pass" if target["ratio"] >= 0.8 else "FAIL")
    header = next(line for line in out.splitlines() if line.startswith("| workload"))
    assert "x rlmesh-shm (host-served)" in header
    assert re.search(r"\| CartPole-v1 +\| sandbox-shm +\| +[0-9,]+ \| +[0-9.]+ \|", out)
    assert re.search(
        r"\| 4 MiB obs +\| sandbox-shm +\| idle +\| rlmesh-shm +\| +[0-9.]+x \| >= 0.8x +\| (pass|FAIL)", out
    )
    assert re.search(r"\| cold +\| +[0-9.]+ \| +1 \| image built", out)
    assert re.search(r"\| warm +\| +[0-9.]+ \| +1 \| image reused", out)
    # The cold start's throwaway image is gone again (other runs may add images meanwhile).
    api = docker_or_skip()
    try:
        after = {tag for image in api.images.list(name="rlmesh-sandbox") for tag in image.tags}
    finally:
        api.close()
    assert cold[0]["image"] not in after and cold[0]["image"] not in images


def test_bench_transports_without_a_docker_daemon_skips_the_sandbox_rows_in_one_line(tmp_path) -> None:
    environ = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    args = ["-m", "benchmarks.bench_transports", "--quick", "--conditions", "idle", "--no-gymnasium"]
    rows, out = run_bench([*args, "--spin", "on", "--workload", "CartPole-v1"], str(ROOT), env=environ)
    assert {(r["kind"], r["transport"]) for r in rows} == {
        ("row", "rlmesh-shm"),
        ("row", "rlmesh-unix"),
        ("row", "rlmesh-tcp"),
    }
    assert out.count("sandbox rows skipped: no Docker daemon") == 1
    assert "Sandbox targets" not in out


def test_bench_transports_reports_a_sandbox_that_cannot_start_and_still_prints_the_rest(tmp_path) -> None:
    api = docker_or_skip()
    api.close()
    # A base image from a registry nobody listens at: the pull fails at once, no network needed.
    environ = {**os.environ, "RLMESH_SANDBOX_BASE_IMAGE": "127.0.0.1:9/rlmesh-no-such-base:none"}
    args = [*SANDBOX_SMOKE[:-6], "--spin", "on", "--workload", "CartPole-v1"]
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=100, cwd=str(ROOT), env=environ
    )
    assert result.returncode == 1, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {r["transport"] for r in rows} == {"rlmesh-shm", "rlmesh-unix", "rlmesh-tcp"}
    assert "| CartPole-v1 | rlmesh-shm" in result.stdout  # the table of what was measured
    assert "sandbox rows failed: the image 127.0.0.1:9/rlmesh-no-such-base:none" in result.stdout


def test_bench_transports_rejects_an_unknown_condition() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_transports", "--conditions", "idle,loaded"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
    )
    assert result.returncode == 2 and "idle, busy" in result.stderr


PEER_PYTHON = os.environ.get("RLMESH_BENCH_PEER_PYTHON", "/tmp/peer-rlmesh/bin/python")


@pytest.mark.skipif(
    not os.path.exists(PEER_PYTHON),
    reason=f"no interpreter with the published package at {PEER_PYTHON} (RLMESH_BENCH_PEER_PYTHON)",
)
def test_bench_transports_against_the_published_package() -> None:
    rows, out = run_bench(
        [
            str(ROOT / "benchmarks" / "bench_transports.py"),
            "--workload",
            "CartPole-v1",
            "--seconds",
            "0.1",
            "--rounds",
            "1",
            "--no-gymnasium",
            "--no-sandbox",
            "--peer-python",
            PEER_PYTHON,
        ],
        str(ROOT),
    )
    published = [row for row in rows if row["transport"].startswith("published-rlmesh-")]
    assert {(row["transport"], row["condition"]) for row in published} == {
        (t, c) for t in ("published-rlmesh-unix", "published-rlmesh-tcp") for c in ("idle", "busy")
    }
    for row in published:  # the peer's versions, as its scripts reported them
        assert row["peer_rlmesh"] and row["peer_python"] and row["steps_per_s_median"] > 0
    assert "x published-rlmesh-unix" in out


def test_the_peer_scripts_refuse_this_repositorys_rlmesh() -> None:
    # This interpreter has this tree's rlmesh: the peer client must not time it as the published one.
    result = subprocess.run(
        [sys.executable, "-I", str(ROOT / "benchmarks" / "_peer_client.py"), "unix:///nowhere.sock"]
        + ["--seconds", "0.1", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "not the published package" in result.stderr


class CountingEnv:
    """Episodes of three steps; records the actions."""

    def __init__(self) -> None:
        self.actions: list[int] = []
        self.resets = 0
        self.t = 0

    def reset(self, *, seed: int | None = None) -> tuple[int, dict[str, Any]]:
        self.resets += 1
        self.t = 0
        return 0, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        self.actions.append(action)
        self.t += 1
        return self.t, 1.0, self.t >= 3, False, {}


def test_step_rates_times_rounds_and_resets_ended_episodes() -> None:
    from benchmarks._harness import step_rates

    env = CountingEnv()
    rates = step_rates(env, 0.02, 3, warmup_steps=5)
    assert len(rates) == 3 and all(rate > 0 for rate in rates)
    assert env.actions[5:9] == [0, 1, 0, 1]  # actions alternate within a round
    assert env.resets >= len(env.actions) // 3  # every ended episode was reset


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's exit is reaped by init whenever init gets to it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_busy_processes_are_killed_when_the_block_fails(error: type[BaseException]) -> None:
    from benchmarks._harness import busy_processes

    pids: list[int] = []
    with pytest.raises(error):
        with busy_processes(1) as started:
            pids = started
            assert len(pids) == 1 and _alive(pids[0])
            raise error()
    assert pids and not _alive(pids[0])  # killed and reaped


def test_a_busy_process_exits_when_its_parent_goes() -> None:
    # Its parent is a shell that waits for a line on stdin; once the shell is gone the spinner
    # notices and exits, without being killed (as when a benchmark dies of SIGKILL).
    busy = ROOT / "benchmarks" / "_busy.py"
    shell = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" "{busy}" $$ >/dev/null 2>&1 & echo $!; read line'],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert shell.stdin is not None and shell.stdout is not None
    pid = int(shell.stdout.readline())
    time.sleep(0.3)
    assert _alive(pid)  # spinning while its parent lives
    shell.stdin.close()
    shell.wait(10)
    shell.stdout.close()
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


VECTOR_IMPLS = (
    "rlmesh-w1",
    "rlmesh-w2",
    "rlmesh-sync",
    "gymnasium-async",
    "gymnasium-sync",
    "pufferlib-w1",
    "pufferlib-w2",
)


def test_bench_vector_quick_measures_every_row_and_reports_the_targets(tmp_path) -> None:
    plot = tmp_path / "vector.png"
    rows, out = run_bench(["-m", "benchmarks.bench_vector", "--quick", "--plot", str(plot)], str(ROOT))
    cells = {(r["workload"], r["impl"], r["condition"]): r for r in rows if r["kind"] == "row"}
    workloads = ("CartPole-v1", "84x84x4 uint8")
    conditions = ("idle", "busy")
    # Every row, on both workloads, idle and with one busy process.
    assert set(cells) == {(w, i, c) for w in workloads for i in VECTOR_IMPLS for c in conditions}
    try:
        import pufferlib  # noqa: F401

        have_pufferlib = True
    except ImportError:
        have_pufferlib = False
    for (workload, impl, condition), row in cells.items():
        assert row["bench"] == "vector" and row["num_envs"] == 8
        assert row["busy_processes"] == (1 if condition == "busy" else 0)
        assert row["obs_bytes"] == (16 if workload == "CartPole-v1" else 84 * 84 * 4)
        if impl.startswith("pufferlib") and not have_pufferlib:
            assert row["status"] == "not installed" and row["env_steps_per_s_median"] is None
            continue
        assert row["status"] == "measured"
        assert row["env_steps_per_s_median"] > 0 and len(row["rounds"]) == 1 and row["seconds"] == 0.2
    targets = {r["target"]: r for r in rows if r["kind"] == "target"}
    assert len(targets) == 5
    for target in targets.values():
        if target["against"] == "pufferlib-best" and not have_pufferlib:
            assert target["ratio"] is None and "not installed" in target["result"]
        else:  # measured: a ratio, judged against the figure (the verdict itself is not tested)
            assert target["ratio"] > 0 and target["result"] in ("pass", "FAIL")
    # The tables: every row with its ratio to gymnasium's AsyncVectorEnv, and the targets.
    header = next(line for line in out.splitlines() if line.startswith("| workload"))
    assert "env-steps/s idle" in header and "env-steps/s busy" in header and "x gymnasium-async" in header
    for workload in workloads:
        for impl in VECTOR_IMPLS:
            assert any(re.match(rf"\| {workload} +\| {impl} +\|", line) for line in out.splitlines()), impl
    w1 = next(line for line in out.splitlines() if re.match(r"\| CartPole-v1 +\| rlmesh-w1 +\|", line))
    assert w1.count("x / ") == 1  # a ratio per condition
    assert "| target" in out and ">= 5x" in out and ">= 3.4x" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_vector_pixel_env_is_deterministic_and_writes_new_frames() -> None:
    from benchmarks._vector_envs import make_pixels

    a, b = make_pixels(), make_pixels()
    obs_a, _ = a.reset(seed=3)
    obs_b, _ = b.reset(seed=3)
    assert obs_a.shape == (84, 84, 4) and obs_a.dtype.name == "uint8" and (obs_a == obs_b).all()
    first = obs_a.copy()
    step_a = a.step(1)
    step_b = b.step(1)
    assert (step_a[0] == step_b[0]).all() and step_a[1:4] == (1.0, False, False)
    assert not (step_a[0] == first).all()  # a whole new frame
    assert (make_pixels().reset(seed=4)[0] != first).any()  # the seed matters


def test_bench_fleet_quick_without_ray_measures_direct_and_sharded() -> None:
    # The Ray rows (fleet, ray-actors, recovery) start Ray and a fleet: too slow
    # for a smoke run here; tests/integration/test_ray_fleet.py covers the fleet.
    rows, out = run_bench(
        ["-m", "benchmarks.bench_fleet", "--quick", "--no-ray", "--endpoints", "2", "--lanes", "4"], str(ROOT)
    )
    assert {row["impl"] for row in rows} == {"direct", "sharded"}
    for row in rows:
        assert row["bench"] == "bench_fleet" and row["endpoints"] == 2 and row["lanes"] == 4
        assert row["env_steps_per_s_median"] > 0 and len(row["rounds"]) == 2
    assert re.search(r"\| fleet +\| skipped \(--no-ray\)", out)
    assert re.search(r"\| sharded per-step cost <= 1.10x direct \| +[0-9.]+x \| (pass|FAIL) \|", out)
