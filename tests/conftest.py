"""Shared fixtures. The autouse ``no_leaks`` fixture is the suite's own leak check.

After every test it compares, with what was there before the test:

* entries in ``/dev/shm`` (any name, not only rlmesh's prefix);
* live child processes of the test process;
* open socket file descriptors of the test process.

Anything new fails the test, after a short grace period for processes and
sockets that are already on their way out.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlmesh.shm._layout import NAME_PREFIX

ROOT = Path(__file__).resolve().parent.parent
SHM_DIR = Path("/dev/shm")


def shm_entries() -> set[str]:
    """Names in /dev/shm."""
    try:
        return set(os.listdir(SHM_DIR))
    except FileNotFoundError:  # pragma: no cover - every Linux has it
        return set()


def child_pids() -> set[int]:
    """Pids of live (non-zombie) children of this process."""
    me = str(os.getpid())
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == me and fields[0] != "Z":
            out.add(int(entry))
    return out


def socket_fds() -> set[int]:
    """This process's file descriptors that are sockets."""
    out: set[int] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                out.add(int(fd))
        except OSError:
            continue
    return out


def _settle(probe, before, grace: float = 3.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + grace
    while True:
        added = probe() - before
        if not added or time.monotonic() >= deadline:
            return added
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves /dev/shm entries, child processes or sockets."""
    shm_before = shm_entries()
    children_before = child_pids()
    sockets_before = socket_fds()
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return
    problems = []
    shm_added = _settle(shm_entries, shm_before)
    if shm_added:
        problems.append(f"new /dev/shm entries: {sorted(shm_added)}")
    children_added = _settle(child_pids, children_before)
    if children_added:
        problems.append(f"child processes still alive: {sorted(children_added)}")
    sockets_added = _settle(socket_fds, sockets_before)
    if sockets_added:
        problems.append(f"sockets still open (fds): {sorted(sockets_added)}")
    if problems:
        # Report, then clean up, so that one failing test leaves nothing behind
        # either (an orphaned server would outlive the whole run).
        for pid in children_added:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        # Only rlmesh's own names whose creator is gone (the janitor's lock
        # probe): another process's entry (a concurrent run's multiprocessing
        # semaphore, or a live segment of a concurrent rlmesh run, which its
        # workers may still have to attach by name) is reported but never
        # unlinked, since unlinking it would break that process.
        from rlmesh.shm import janitor

        stale = {info.name for info in janitor.list_segments() if not info.alive}
        for name in shm_added:
            if name.startswith(NAME_PREFIX) and name in stale:
                Path("/dev/shm", name).unlink(missing_ok=True)
        pytest.fail("test leaked resources: " + "; ".join(problems), pytrace=False)


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 60.0) -> str:
    """Run ``code`` in a fresh interpreter, return its stdout; fail on a non-zero exit."""
    import subprocess

    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


#: Set by .ci/run: the training extras (torch, Stable-Baselines3) are installed,
#: so a test that needs them must run; a skip for a missing one fails instead.
REQUIRE_TRAIN = "RLMESH_REQUIRE_SB3"
#: Set by .ci/run: Ray is installed (the ``ray`` extra), so the Ray tests must run.
REQUIRE_RAY = "RLMESH_REQUIRE_RAY"


def import_or_skip(name: str, *, required_by: str = REQUIRE_TRAIN) -> Any:
    """``pytest.importorskip(name)``, except that it fails when ``$required_by`` is 1 (as in CI)."""
    if os.environ.get(required_by) != "1":
        return pytest.importorskip(name)
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(f"{required_by}=1 but {name} cannot be imported: {exc}", pytrace=False)


#: Set by .ci/run once dockerd runs and the sandbox base image is built: the
#: Docker sandbox tests must run; a skip for a missing daemon fails instead.
REQUIRE_DOCKER = "RLMESH_REQUIRE_DOCKER"


def docker_or_skip() -> Any:
    """A docker-py client of the local daemon, else skip (fail when $RLMESH_REQUIRE_DOCKER is 1, as in CI).

    The caller closes it (its connection to the daemon is a socket the leak check counts).
    """
    reason = None
    try:
        from rlmesh.sandbox import _docker

        return _docker.client()
    except Exception as exc:  # BackendUnavailable (no docker package), SandboxError (no daemon)
        reason = f"no Docker daemon for the sandbox tests: {exc}"
    if os.environ.get(REQUIRE_DOCKER) == "1":
        pytest.fail(f"{REQUIRE_DOCKER}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_leaks: skip the leak check (for tests of the check itself)")
    config.stash[_TMP_BEFORE] = temp_entries()


#: Set to 1 (CI does) to fail the run when it left entries in the temp directory.
REQUIRE_CLEAN_TMP = "RLMESH_REQUIRE_CLEAN_TMP"
_TMP_BEFORE = pytest.StashKey[set[str]]()


def temp_entries() -> set[str]:
    """Names in the temp directory, except pytest's own (its ``tmp_path`` roots, kept by design)
    and multiprocessing's."""
    import tempfile

    try:
        names = os.listdir(tempfile.gettempdir())
    except OSError:  # pragma: no cover - a temp dir always exists
        return set()
    # pymp-*: multiprocessing's own, removed by its creator's exit handler (this process's at exit).
    return {name for name in names if not name.startswith(("pytest-of-", "pymp-"))}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The run's own leak check of the temp directory (a library's log dir, a server's socket dir).

    Per-test checks cannot attribute temp entries (other processes on the
    machine make them too), so the whole run is compared: the new entries
    are reported, and under $RLMESH_REQUIRE_CLEAN_TMP=1 (CI, where nothing
    else runs) they fail the run.
    """
    before = session.config.stash.get(_TMP_BEFORE, None)
    if before is None:
        return
    added = sorted(temp_entries() - before)
    if not added:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"the run left entries in the temp directory: {added}"
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(message, red=True)
    if os.environ.get(REQUIRE_CLEAN_TMP) == "1" and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- serving helpers ---------------------------------------------------------------

TRANSPORTS = ["unix-shm", "unix-inline", "tcp-shm", "tcp-inline"]


def bind_address(transport: str, tmp_path: Path) -> str:
    """A fresh bind address for a transport id ("unix-shm", "tcp-inline", ...)."""
    if transport.startswith("unix"):
        for i in range(1000):
            path = tmp_path / f"env{i}.sock"
            if not path.exists():
                return f"unix://{path}"
    return "tcp://127.0.0.1:0"


class Served:
    """An in-process EnvServer and a client factory for one transport."""

    def __init__(self, env: object, transport: str, tmp_path: Path, **server_kwargs: object) -> None:
        import rlmesh

        self.transport = transport
        self.server = rlmesh.EnvServer(env, bind_address(transport, tmp_path), **server_kwargs)  # type: ignore[arg-type]
        self.server.start()
        self.clients: list[object] = []

    @property
    def shm(self) -> bool:
        return self.transport.endswith("shm")

    def client(self, cls: type | None = None, **kwargs: object) -> object:
        import rlmesh

        cls = cls or rlmesh.RemoteEnv
        kwargs.setdefault("shared_memory", self.shm)
        kwargs.setdefault("request_timeout_seconds", 30)
        client = cls(self.server.address, **kwargs)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()  # type: ignore[attr-defined]
        self.server.shutdown()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """serve(env, transport, **server_kwargs) -> Served; everything is shut down after the test."""
    created: list[Served] = []

    def make(env: object, transport: str = "unix-shm", **server_kwargs: object) -> Served:
        served = Served(env, transport, tmp_path, **server_kwargs)
        created.append(served)
        return served

    yield make
    for served in created:
        served.close()


def workers_of(pid: int) -> list[int]:
    """Live vector worker processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z" and b"rlmesh.vector._worker" in cmdline:
            out.append(int(entry))
    return sorted(out)


def _task_states(pid: int) -> str:
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as fh:
                states.append(fh.read().rsplit(")", 1)[1].split()[0])
        except OSError:
            continue
    return "".join(states)


def stop_process(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and return once every one of its threads is stopped.

    A stop takes effect asynchronously, and on a loaded machine a SIGSTOP sent
    to a multithreaded server was seen not to take at all (its threads stayed
    running and answered): the signal is sent again until the kernel reports
    every thread stopped, so a test of a stopped peer really has one.
    """
    deadline = time.monotonic() + timeout
    while True:
        os.kill(pid, signal.SIGSTOP)
        resend = time.monotonic() + 0.2
        while time.monotonic() < resend:
            states = _task_states(pid)
            if states and all(state in "Tt" for state in states):
                return
            time.sleep(0.005)
        if time.monotonic() >= deadline:
            raise AssertionError(f"process {pid} did not stop (thread states {states!r})")


def serve_subprocess(target: str, address: str, *extra: str, kwargs: dict[str, object] | None = None):  # type: ignore[no-untyped-def]
    """Start `rlmesh serve TARGET` in a subprocess that can import tests.envs; return (proc, address)."""
    from rlmesh._demo import start_server

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return start_server(target, kwargs or {}, address, extra=extra, env=env, cwd=str(ROOT), quiet=True)
