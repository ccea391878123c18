"""The quickstart examples run as written, as separate processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)
QUICKSTART = ROOT / "examples" / "quickstart"


class Server:
    def __init__(self, script: str, address: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(QUICKSTART / script), "--address", address, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"on (\S+)$", line.strip())
        assert match, f"unexpected first line {line!r}; stderr: {self.proc.stderr.read() if not line else ''}"
        self.address = match.group(1)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err
        return out


def run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(QUICKSTART / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("inline", [False, True])
def test_eval_against_the_gymnasium_server(tmp_path, inline: bool) -> None:
    server = Server("serve_gymnasium.py", f"unix://{tmp_path}/cartpole.sock")
    try:
        out = run("eval.py", "--address", server.address, *(["--inline"] if inline else []))
        assert f"({'inline' if inline else 'shm'})" in out
        assert re.search(r"episode ended after \d+ steps, return \d+\.\d", out)
    finally:
        server.stop()


def test_eval_against_the_counter_server_over_tcp() -> None:
    server = Server("serve.py", "127.0.0.1:0", "--limit", "6")
    try:
        out = run("eval.py", "--address", server.address, "--max-steps", "100")
        assert "episode ended after" in out
    finally:
        server.stop()


def test_eval_many_across_both_servers(tmp_path) -> None:
    gym_server = Server("serve_gymnasium.py", "127.0.0.1:0", "--num-envs", "1")
    counter = Server("serve.py", f"unix://{tmp_path}/counter.sock")
    try:
        out = run("eval_many.py", gym_server.address, counter.address)
        assert f"CartPole-v1 at {gym_server.address}" in out
        assert f"UnknownEnv-v1 at {counter.address}" in out
    finally:
        gym_server.stop()
        counter.stop()
    assert os.path.exists(tmp_path) and not (tmp_path / "counter.sock").exists()


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_model_worker_against_the_gymnasium_server(tmp_path, backend: str) -> None:
    server = Server("serve_gymnasium.py", f"unix://{tmp_path}/cartpole.sock")
    try:
        out = run("model.py", "--address", server.address, "--seeds", "0", "1", "--backend", backend)
        assert re.search(r"seed=0 steps=\d+ return=\d+\.\d", out) and "RunResult(episodes=2" in out
    finally:
        server.stop()


def test_the_readme_example_runs(tmp_path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    block = block.replace("/tmp/cartpole.sock", str(tmp_path / "readme.sock"))
    result = subprocess.run(
        [sys.executable, "-c", block], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    mean_reward, steps = result.stdout.split()
    assert float(mean_reward) > 0 and int(steps) > 0
