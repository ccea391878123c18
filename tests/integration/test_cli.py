"""The command line: rlmesh serve, demo, bench, shm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh.shm import Segment
from tests.conftest import ROOT, serve_subprocess

pytestmark = pytest.mark.timeout(180)
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def rlmesh_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rlmesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=ROOT,
    )


def test_serve_a_factory_with_kwargs_and_num_envs(tmp_path) -> None:
    from rlmesh._demo import stop_server

    proc, address = serve_subprocess(
        "rlmesh._demo:ImageEnv", f"unix://{tmp_path}/img.sock", kwargs={"nbytes": 4096}
    )
    try:
        with rnp.RemoteEnv(address) as env:
            obs, _ = env.reset()
            assert obs.dtype.name == "uint8" and obs.nbytes == 4096
    finally:
        stop_server(proc)
    proc, address = serve_subprocess("tests.envs:make_count_env", f"unix://{tmp_path}/count.sock")
    try:
        with rnp.RemoteEnv(address) as env:
            assert env.reset(seed=4)[0][2] == 4.0
    finally:
        stop_server(proc)
    proc, address = serve_subprocess("CartPole-v1", f"unix://{tmp_path}/v.sock", "--num-envs", "3")
    try:
        with rnp.RemoteVectorEnv(address) as env:
            assert env.num_envs == 3
            obs, _ = env.reset(seed=0)
            assert obs.shape == (3, 4)
    finally:
        stop_server(proc)


def test_serve_reports_bad_targets() -> None:
    result = rlmesh_cli("serve", "no_such_module_xyz:make", "--address", "127.0.0.1:0")
    assert result.returncode != 0 and "cannot import" in result.stderr
    result = rlmesh_cli("serve", "CartPole-v1", "--kwargs-json", "[1]")
    assert result.returncode != 0 and "JSON object" in result.stderr


def test_demo_sandbox_rows_without_a_docker_daemon_are_one_note(tmp_path) -> None:
    code = "from rlmesh import _demo; cells, note = _demo.demo_sandbox_cells(build=True); "
    code += "print(len(cells), note)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0 sandbox rows skipped: no Docker daemon"


def test_demo_runs_and_writes_a_table_and_a_plot(tmp_path) -> None:
    plot = tmp_path / "demo.png"
    data = tmp_path / "demo.json"
    result = rlmesh_cli("demo", "--quick", "--plot", str(plot), "--json", str(data))
    assert result.returncode == 0, result.stderr
    assert "| CartPole-v1 | shm |" in result.stdout and "| 4 MiB obs | tcp |" in result.stdout
    cells = json.loads(data.read_text())
    # The sandbox rows run when a Docker daemon answers and their image is built; else a note says why not.
    skipped = "sandbox rows skipped:" in result.stdout
    sandboxed = set() if skipped else {("CartPole-v1", "sandbox-shm"), ("4 MiB obs", "sandbox-shm")}
    assert {(c["workload"], c["transport"]) for c in cells} == {
        (w, t) for w in ("CartPole-v1", "28 KiB obs", "4 MiB obs") for t in ("shm", "unix", "tcp")
    } | {("8x CartPole-v1", "rlmesh, 1 worker"), ("8x CartPole-v1", "gymnasium AsyncVectorEnv")} | sandboxed
    assert (
        skipped or "sandbox-shm over shm served on the host (target >= 0.8x): CartPole-v1 " in result.stdout
    )
    assert all(c["steps_per_s"] > 0 for c in cells)
    # The vector rows' table: env-steps/s and the ratio to gymnasium's AsyncVectorEnv.
    assert "| 8x CartPole-v1 | rlmesh, 1 worker |" in result.stdout
    assert "x gymnasium AsyncVectorEnv |" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_prints_json_lines() -> None:
    result = rlmesh_cli(
        "bench",
        "--workload",
        "CartPole-v1",
        "--transport",
        "shm",
        "--seconds",
        "0.2",
        "--rounds",
        "1",
        "--json-only",
    )
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[0])
    assert line["workload"] == "CartPole-v1" and line["transport"] == "shm" and line["steps_per_s"] > 100


def test_shm_ls_and_clean_find_stale_segments() -> None:
    code = (
        "from rlmesh.shm import Segment; s = Segment.create(8192); print(s.name, flush=True); "
        "import os; os._exit(0)"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=ENV)
    name = child.stdout.strip()
    assert name.startswith("rlm-") and os.path.exists(f"/dev/shm/{name}")
    live = Segment.create(4096)
    try:
        # The janitor leaves segments younger than its grace period alone.
        time.sleep(2.1)
        listing = rlmesh_cli("shm", "ls")
        assert name in listing.stdout and "stale" in listing.stdout
        assert live.name in listing.stdout
        dry = rlmesh_cli("shm", "clean", "--dry-run")
        assert f"would remove {name}" in dry.stdout and os.path.exists(f"/dev/shm/{name}")
        assert live.name not in dry.stdout
        cleaned = rlmesh_cli("shm", "clean")
        assert f"removed {name}" in cleaned.stdout and live.name not in cleaned.stdout
        assert not os.path.exists(f"/dev/shm/{name}")
        assert os.path.exists(f"/dev/shm/{live.name}")
    finally:
        live.close()
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")


def test_python_dash_m_rlmesh_help() -> None:
    result = rlmesh_cli("--help")
    assert result.returncode == 0 and "serve" in result.stdout and "demo" in result.stdout
    assert rlmesh.__version__
