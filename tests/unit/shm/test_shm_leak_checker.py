"""The suite's leak check (tests/conftest.py) really catches a leaked segment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import conftest
import pytest

from rlmesh.shm import Segment


@pytest.mark.allow_leaks
def test_the_checks_helpers_see_a_leaked_segment() -> None:
    before = conftest.shm_entries()
    seg = Segment.create(4096)
    try:
        assert conftest._settle(conftest.shm_entries, before, grace=0.1) == {seg.name}
    finally:
        seg.close()
    assert conftest._settle(conftest.shm_entries, before, grace=0.1) == set()


LEAKY_TESTS = textwrap.dedent(
    """
    import pytest
    from rlmesh.shm import Segment

    KEEP = []

    def test_leaks_a_segment():
        seg = Segment.create(4096)
        KEEP.append(seg)
        print("LEAKED", seg.name)

    @pytest.mark.allow_leaks
    def test_leak_allowed_by_the_marker():
        seg = Segment.create(4096)
        KEEP.append(seg)
        print("LEAKED", seg.name)

    def test_closes_its_segment():
        Segment.create(4096).close()

    def test_leaks_a_child_process():
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        KEEP.append(child)
        print("CHILD", child.pid)
    """
)


@pytest.mark.timeout(60)
def test_the_autouse_fixture_fails_a_leaky_test(tmp_path: Path) -> None:
    shutil.copy(conftest.ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    before = conftest.shm_entries()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-s",
            "-rA",
            "-W",
            "ignore::ResourceWarning",
            "test_leaky.py",
        ],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    leaked = re.findall(r"LEAKED (rlm-[0-9a-f]{20})", proc.stdout)
    try:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert len(leaked) == 2
        assert "ERROR test_leaky.py::test_leaks_a_segment" in proc.stdout
        reports = re.findall(r"new /dev/shm entries: \[([^\]]*)\]", proc.stdout)
        # The failure text appears once or twice (the short summary may repeat it,
        # depending on the terminal width); either way only the unmarked leak is named.
        assert reports and set(reports) == {repr(leaked[0])}
        assert "PASSED test_leaky.py::test_leak_allowed_by_the_marker" in proc.stdout
        assert "PASSED test_leaky.py::test_closes_its_segment" in proc.stdout
        # A leaked child is reported, and killed: nothing outlives the run.
        (child,) = re.findall(r"CHILD (\d+)", proc.stdout)
        assert "ERROR test_leaky.py::test_leaks_a_child_process" in proc.stdout
        assert f"child processes still alive: [{child}]" in proc.stdout
        assert not Path(f"/proc/{child}").exists()
    finally:
        for name in leaked:  # the inner session's finalizers should have removed them
            Path("/dev/shm", name).unlink(missing_ok=True)
    assert conftest.shm_entries() - before == set()
