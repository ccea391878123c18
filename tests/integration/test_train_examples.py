"""The training examples and the README's Gymnasium snippet run as written, as separate processes.

The examples run in quick mode (a couple of thousand steps): each serves
CartPole in a subprocess of its own, trains through rlmesh.gymnasium over shared
memory, and stops its server. They need torch (and SB3 for train_sb3.py):
skipped without them, failed under RLMESH_REQUIRE_SB3=1 (CI).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, import_or_skip

pytestmark = pytest.mark.timeout(150)


def run(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_train_sb3_quick_mode(tmp_path: Path) -> None:
    import_or_skip("torch")
    import_or_skip("stable_baselines3")
    png = tmp_path / "curve.png"
    out = run("examples/train_sb3.py", "--timesteps", "1024", "--eval-episodes", "2", "--plot", str(png))
    assert re.search(r"serving CartPole-v1 at unix://\S+ over shm", out), out
    assert re.search(r"remote: 1024 steps in \d+\.\d s, \d+ env-steps/s", out), out
    assert re.search(r"mean evaluation reward over 2 episodes: \d+\.\d", out), out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_vector_quick_mode() -> None:
    import_or_skip("torch")
    out = run("examples/train_vector.py", "--timesteps", "1024", "--num-envs", "4")
    assert re.search(r"training on 4 lanes of CartPole-v1 served by .* \(shm, autoreset NextStep\)", out), out
    match = re.search(r"remote: (\d+) steps in \d+\.\d s, \d+ env-steps/s, mean return of the last \d+", out)
    assert match and int(match.group(1)) == 1024, out


def test_the_readme_gymnasium_snippet_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- gymnasium-example -->\n```python\n", 1)[1].split("```", 1)[0]
    block = block.replace("/tmp/cartpole-gym.sock", str(tmp_path / "gym.sock"))
    out = run("-c", block, timeout=60)
    assert re.fullmatch(r"episode return \d+\.\d+\n", out), out
