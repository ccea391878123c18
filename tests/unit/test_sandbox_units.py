"""The sandbox's parts that need no Docker daemon: sources, hub resolution, users, run flags, images."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh.errors import SandboxError
from rlmesh.net.address import Address
from rlmesh.net.stream import SocketStream
from rlmesh.sandbox import _docker, _image
from rlmesh.sandbox._sources import Source, parse_source, resolve_hf
from rlmesh.wire.client_session import ClientSession

# -- sources ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "target", "revision"),
    [
        ("CartPole-v1", "gym", "CartPole-v1", None),
        ("ALE/Pong-v5", "gym", "ALE/Pong-v5", None),
        ("gym://CartPole-v1", "gym", "CartPole-v1", None),
        ("my_pkg.envs:make_env", "factory", "my_pkg.envs:make_env", None),
        ("docker://registry.local/env:1.0", "image", "registry.local/env:1.0", None),
        ("image://env@sha256:abc", "image", "env@sha256:abc", None),
        ("hf://org/repo@" + "a" * 40, "hf", "org/repo", "a" * 40),
        ("hf://org/repo", "hf", "org/repo", None),
        ("hf://org/repo@main", "hf", "org/repo", "main"),
    ],
)
def test_sources_are_classified(text: str, kind: str, target: str, revision: str | None) -> None:
    source = parse_source(text)
    assert (source.kind, source.target, source.revision, source.requested) == (kind, target, revision, text)
    assert source.builds is (kind != "image")


@pytest.mark.parametrize(
    "text", ["", "no-version", "ftp://x", "gym://", "docker://", "hf://justone", "a b:c"]
)
def test_unknown_sources_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_source(text)


def test_a_source_must_be_a_string() -> None:
    with pytest.raises(TypeError):
        parse_source(42)  # type: ignore[arg-type]


# -- hub sources, resolved against a local git repository ------------------------------------------


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A local "hub": $HF_ENDPOINT/org/repo is a git repository with env.py; its head commit."""
    repo = tmp_path / "hub" / "org" / "repo"
    repo.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "env.py").write_text(
        "def make_env():\n    import gymnasium\n    return gymnasium.make('CartPole-v1')\n"
    )
    (repo / "requirements.txt").write_text("gymnasium\n")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "env", cwd=repo)
    monkeypatch.setenv("HF_ENDPOINT", f"file://{tmp_path / 'hub'}")
    return repo, git("rev-parse", "HEAD", cwd=repo)


def test_a_pinned_hub_source_is_checked_out_at_its_commit(hub: tuple[Path, str], tmp_path: Path) -> None:
    repo, sha = hub
    got, checkout = resolve_hf(
        parse_source(f"hf://org/repo@{sha}"), allow_unpinned=False, cache=tmp_path / "c"
    )
    assert got == sha
    assert (checkout / "env.py").read_text() == (repo / "env.py").read_text()
    assert not (checkout / ".git").exists()
    # A later commit does not change what the pin checks out (cached by commit).
    (repo / "env.py").write_text("raise SystemExit('changed')\n")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "change", cwd=repo)
    again, checkout2 = resolve_hf(
        parse_source(f"hf://org/repo@{sha}"), allow_unpinned=False, cache=tmp_path / "c"
    )
    assert again == sha and "make_env" in (checkout2 / "env.py").read_text()


def test_an_unpinned_hub_source_needs_allow_unpinned(hub: tuple[Path, str], tmp_path: Path) -> None:
    repo, sha = hub
    for text in ("hf://org/repo", "hf://org/repo@main"):
        with pytest.raises(ValueError, match="allow_unpinned_hf"):
            resolve_hf(parse_source(text), allow_unpinned=False, cache=tmp_path / "c")
        got, _ = resolve_hf(parse_source(text), allow_unpinned=True, cache=tmp_path / "c")
        assert got == sha


def test_a_hub_commit_that_does_not_exist_or_has_no_env_py_fails(
    hub: tuple[Path, str], tmp_path: Path
) -> None:
    repo, _ = hub
    with pytest.raises(SandboxError):
        resolve_hf(parse_source("hf://org/repo@" + "0" * 40), allow_unpinned=False, cache=tmp_path / "c")
    (repo / "env.py").unlink()
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "no env", cwd=repo)
    sha = git("rev-parse", "HEAD", cwd=repo)
    with pytest.raises(SandboxError, match="env.py"):
        resolve_hf(parse_source(f"hf://org/repo@{sha}"), allow_unpinned=False, cache=tmp_path / "c")


# -- arguments refused before any container starts --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("CartPole-v1",), {"packages": "gymnasium"}, TypeError, "bare string"),
        (("CartPole-v1",), {"imports": "gymnasium"}, TypeError, "bare string"),
        (("docker://img:1",), {"packages": ["x"]}, ValueError, "prebuilt"),
        (("docker://img:1",), {"imports": ["x"]}, ValueError, "prebuilt"),
        (("docker://img:1",), {"max_episode_steps": 5}, ValueError, "prebuilt"),
        (("hf://org/repo@" + "a" * 40,), {}, ValueError, "trust_remote_code"),
        (("CartPole-v1",), {"allow_unpinned_hf": True}, ValueError, "hf://"),
        (("CartPole-v1",), {"network": "host"}, ValueError, "host"),
        (("CartPole-v1",), {"network": "container:abc"}, ValueError, "namespace"),
        (("CartPole-v1",), {"render_mode": object()}, TypeError, "JSON"),
        (("CartPole-v1",), {"num_envs": 2}, TypeError, "SandboxVectorEnv"),
    ],
)
def test_bad_arguments_are_refused_before_docker(args: Any, kwargs: Any, error: Any, match: str) -> None:
    with pytest.raises(error, match=match):
        rnp.SandboxEnv(*args, **kwargs)


def test_a_sandbox_vector_env_needs_two_lanes_and_a_known_mode() -> None:
    with pytest.raises(ValueError, match="num_envs >= 2"):
        rnp.SandboxVectorEnv("CartPole-v1", 1)
    with pytest.raises(ValueError, match="vectorization_mode"):
        rnp.SandboxVectorEnv("CartPole-v1", 2, vectorization_mode="threads")


def test_the_sandbox_classes_are_the_backends_clients() -> None:
    import rlmesh.jax as rjax

    assert issubclass(rnp.SandboxEnv, rnp.RemoteEnv) and issubclass(rnp.SandboxVectorEnv, rnp.RemoteVectorEnv)
    assert issubclass(rjax.SandboxEnv, rjax.RemoteEnv) and issubclass(
        rjax.SandboxVectorEnv, rjax.RemoteVectorEnv
    )
    assert issubclass(rlmesh.SandboxEnv, rlmesh.RemoteEnv)
    assert issubclass(rlmesh.SandboxVectorEnv, rlmesh.RemoteVectorEnv)
    assert rnp.SandboxEnv.__module__ == "rlmesh.numpy"


def test_importing_the_sandbox_package_does_not_import_docker() -> None:
    code = (
        "import sys, rlmesh, rlmesh.sandbox, rlmesh.sandbox._bootstrap, rlmesh.cli; rlmesh.cli._parser(); "
        "rlmesh.SandboxEnv; "
        "bad = [m for m in ('docker', 'numpy', 'gymnasium') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- the container's user and flags -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("security", "uid", "gid", "want"),
    [
        (set(), 1000, 1000, ("1000:1000", None)),
        (set(), 0, 0, ("65534:65534", None)),
        ({"rootless", "seccomp"}, 1000, 1000, ("0:0", None)),
        ({"userns"}, 1000, 100, ("1000:100", "host")),
        ({"userns"}, 0, 0, ("65534:65534", "host")),
    ],
)
def test_the_container_user_follows_the_daemon(security: set[str], uid: int, gid: int, want: Any) -> None:
    assert _docker.container_user(security, uid, gid) == want


def test_run_kwargs_harden_the_container() -> None:
    pytest.importorskip("docker")
    kwargs = _docker.run_kwargs(
        image="img",
        user="65534:65534",
        userns_mode=None,
        session_dir="/tmp/rlmesh-sbx-x",
        environment={"A": "1"},
        labels={"rlmesh.sandbox": "1"},
        memory="1g",
        cpus=1.5,
        pids_limit=80,
        shm_size="64m",
        network="none",
    )
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["read_only"] is True and "noexec" in kwargs["tmpfs"]["/tmp"]
    assert kwargs["network_mode"] == "none" and kwargs["ipc_mode"] == "private"
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == "1g"
    assert kwargs["pids_limit"] == 80 and kwargs["nano_cpus"] == 1_500_000_000 and kwargs["init"] is True
    assert kwargs["volumes"] == {"/tmp/rlmesh-sbx-x": {"bind": "/run/rlmesh", "mode": "ro"}}
    assert not any(key in kwargs for key in ("privileged", "pid_mode", "devices", "cap_add"))


def test_image_platforms_and_dockerfile() -> None:
    python = _image.ImagePython("3.11", "2.36", "x86_64")
    assert python.abi == "cp311"
    assert python.platforms[0] == "manylinux_2_36_x86_64" and python.platforms[-1] == "any"
    assert "manylinux_2_17_x86_64" in python.platforms and "manylinux2014_x86_64" in python.platforms
    assert _image.ImagePython("3.12", "", "aarch64").platforms == ["any"]
    text = _image.dockerfile("sha256:base", ["/wheelhouse/rlmesh-0.1.0.whl", "gymnasium==1.0"], True, "d1")
    assert text.count("FROM sha256:base") == 2  # two stages: the wheelhouse stays in the first
    assert "--no-index" in text and "COPY --from=build" in text and "COPY source" in text
    assert "rlmesh.sandbox._bootstrap" in text and "LABEL rlmesh.sandbox.inputs=d1" in text


# -- the reaper's owner check ---------------------------------------------------------------------------


def test_owner_alive_follows_the_owner_lock(tmp_path: Path) -> None:
    session = tmp_path / "rlmesh-sbx-test"
    session.mkdir()
    lock = session / _docker.LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    labels = _docker.owner_labels(str(session), "0")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert _docker.owner_alive(labels) is True
    finally:
        os.close(fd)
    assert _docker.owner_alive(labels) is False
    # Without the directory: this process's pid and start time say alive; another start time, dead.
    gone = {**labels, "rlmesh.sandbox.session-dir": str(tmp_path / "gone")}
    assert _docker.owner_alive(gone) is True
    assert _docker.owner_alive({**gone, "rlmesh.sandbox.owner-start": "1"}) is False
    assert _docker.owner_alive({**gone, "rlmesh.sandbox.owner-pidns": "pid:[1]"}) is None


# -- the dial-back session ------------------------------------------------------------------------------


def test_a_server_serves_one_session_on_a_connection_it_dialed(tmp_path: Path) -> None:
    host, container = socket.socketpair()
    server = rlmesh.EnvServer("CartPole-v1", f"unix://{tmp_path}/unused.sock")
    thread = threading.Thread(target=server.serve_connection, args=(container,))
    thread.start()
    conn = ClientSession(
        Address("unix", path=f"{tmp_path}/host.sock"),
        connect_timeout=None,
        request_timeout=10.0,
        shared_memory=True,
        max_message_bytes=1 << 20,
        stream=SocketStream(host),
    )
    env = rnp.RemoteEnv.__new__(rnp.RemoteEnv)
    env._request_timeout = 10.0
    env._attach(conn)
    try:
        assert env.data_plane == "shm"
        obs, _ = env.reset(seed=1)
        assert obs.shape == (4,)
    finally:
        env.close()
    thread.join(10)
    assert not thread.is_alive() and server.state is rlmesh._lifecycle.State.CLOSED
    with pytest.raises(rlmesh.ClosedError):
        server.serve_connection(socket.socket(socket.AF_UNIX))


def test_bootstrap_import_check_names_the_missing_module() -> None:
    code = (
        "import json, os; os.environ['RLMESH_BOOTSTRAP_JSON'] = json.dumps("
        "{'source': {'kind': 'gym', 'target': 'CartPole-v1'}, 'imports': ['json', 'no_such_mod_xyz']}); "
        "from rlmesh.sandbox._bootstrap import main; main()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stdout.startswith("rlmesh sandbox: import check failed: 'no_such_mod_xyz'")


def test_source_dataclass_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Source("gym", "x", "x").kind = "hf"  # type: ignore[misc]


class FakeBuildAPI:
    """Stands in for docker-py's low-level client: replays a build's JSON chunks."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks = chunks
        self.api = self
        self.images = self
        self.removed: list[str] = []

    def build(self, **kwargs: Any) -> Any:
        assert kwargs["network_mode"] == "none" and kwargs["pull"] is False
        return iter(self.chunks)

    def remove(self, image: str, noprune: bool = False) -> None:
        self.removed.append(image)


def test_build_progress_is_logged_and_the_build_stage_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chunks = [
        {"stream": "Step 1/4 : FROM sha256:base AS build"},
        {"stream": " ---> 111111111111"},
        {"stream": "Step 2/4 : RUN pip install"},
        {"stream": " ---> 222222222222"},
        {"stream": "Step 3/4 : FROM sha256:base"},
        {"stream": " ---> 111111111111"},
        {"stream": "Step 4/4 : COPY --from=build a b"},
        {"stream": " ---> 333333333333"},
        {"aux": {"ID": "sha256:final"}},
    ]
    fake = FakeBuildAPI(chunks)
    with caplog.at_level("INFO", logger="rlmesh.sandbox"):
        assert _image._build(fake, tmp_path, "rlmesh-sandbox:x", {}) == "sha256:final"
    steps = [r.getMessage() for r in caplog.records if "Step" in r.getMessage()]
    assert len(steps) == 4 and "Step 4/4" in steps[-1]
    assert fake.removed == ["222222222222"]


def test_a_failed_build_is_a_sandbox_error_with_its_last_lines(tmp_path: Path) -> None:
    chunks = [
        {"stream": "Step 1/2 : RUN pip install --no-index nothing-here"},
        {"stream": "ERROR: No matching distribution found for nothing-here"},
        {"errorDetail": {"message": "returned a non-zero code: 1"}, "error": "x"},
    ]
    with pytest.raises(SandboxError, match="(?s)non-zero code.*No matching distribution"):
        _image._build(FakeBuildAPI(chunks), tmp_path, "rlmesh-sandbox:y", {})


def test_a_wheels_requirements_leave_out_extras(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "pkg_for_sbx").mkdir(parents=True)
    (project / "pkg_for_sbx" / "__init__.py").write_text("")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "pkg-for-sbx"\nversion = "0.1"\ndependencies = ["gymnasium>=1.0", "msgpack"]\n'
        '[project.optional-dependencies]\nextra = ["torch"]\n'
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
        + [str(project)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pkg_for_sbx-*.whl")
    assert sorted(_image.wheel_requirements(wheel)) == ["gymnasium>=1.0", "msgpack"]


@pytest.mark.parametrize("kind", ["missing", "refusing"])
def test_no_daemon_is_a_sandbox_error_that_leaves_no_socket_open(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("docker")
    path = tmp_path / "docker.sock"
    listener = None
    if kind == "refusing":
        # A daemon that died leaves its socket file: bound, never listening, connections refused.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    try:
        with pytest.raises(SandboxError, match="no Docker daemon answers at unix://"):
            _docker.client()
    finally:
        if listener is not None:
            listener.close()
    # The suite's leak check (no fds left) and warnings-as-errors (no unclosed socket) do the rest.
