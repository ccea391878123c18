"""Docker sandboxes against the real daemon (skipped without one; CI sets RLMESH_REQUIRE_DOCKER=1).

The base image is ``rlmesh-base:bookworm`` (``rlmesh sandbox base-image``). The
sandbox image is built once per session by the ``image`` fixture and reused by
every test (same inputs, same tag). After every test: no rlmesh sandbox
container and no session directory is left (besides the suite's own check of
/dev/shm entries, child processes and sockets).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh.errors import BrokenError, SandboxError
from tests.conftest import ROOT, docker_or_skip

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

BASE = os.environ.get("RLMESH_SANDBOX_BASE_IMAGE", "rlmesh-base:bookworm")
#: The same inputs for every test, so one image serves them all: Gymnasium and
#: NumPy pinned to the host's versions (bit-for-bit replay needs the same code).
PARAMS: dict[str, Any] = {
    "base_image": BASE,
    "packages": [f"gymnasium=={metadata.version('gymnasium')}", f"numpy=={metadata.version('numpy')}"],
}
SEEDS = [0, 7, 123]


def sandboxes(api: Any) -> list[Any]:
    """This process's sandbox containers (another process's may run at the same time)."""
    mine = f"rlmesh.sandbox.owner-pid={os.getpid()}"
    return list(api.containers.list(all=True, filters={"label": ["rlmesh.sandbox=1", mine]}))


def session_dirs() -> set[str]:
    roots = {tempfile.gettempdir()}
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        roots.add(os.path.join(runtime, "rlmesh"))
    out = set()
    for root in roots:
        if os.path.isdir(root):
            out |= {os.path.join(root, n) for n in os.listdir(root) if n.startswith("rlmesh-sbx-")}
    return out


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The sandbox image every test runs (built here once, if its inputs changed)."""
    api = docker_or_skip()
    try:
        try:
            api.images.get(BASE)
        except Exception:
            message = f"the sandbox base image {BASE} is missing: run `rlmesh sandbox base-image`"
            if os.environ.get("RLMESH_REQUIRE_DOCKER") == "1":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        # rlmesh's wheel, built once from this checkout: the session's tests share one image
        # even while the checkout changes under them.
        from rlmesh.sandbox import _image

        python = _image.image_python(api, str(api.images.get(BASE).id))
        PARAMS["rlmesh_package"] = str(_image.local_wheel(python))
    finally:
        api.close()
    with rnp.SandboxEnv("CartPole-v1", **PARAMS) as env:
        tag = env.sandbox.image
    yield tag


@pytest.fixture
def api(image: str) -> Iterator[Any]:
    """A daemon client; the test must leave no sandbox container and no session directory."""
    client = docker_or_skip()
    before, dirs = {c.id for c in sandboxes(client)}, session_dirs()
    try:
        yield client
        left = [c.short_id for c in sandboxes(client) if c.id not in before]
        assert not left, f"sandbox containers left behind: {left}"
        assert session_dirs() - dirs == set()
    finally:
        client.close()


def local_episode(seed: int) -> list[tuple[Any, ...]]:
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    out: list[tuple[Any, ...]] = [(obs.tobytes(),)]
    for _ in range(500):
        obs, reward, terminated, truncated, _ = env.step(int(obs[2] > 0))
        out.append((obs.tobytes(), float(reward), bool(terminated), bool(truncated)))
        if terminated or truncated:
            break
    env.close()
    return out


def remote_episode(env: Any, seed: int) -> list[tuple[Any, ...]]:
    obs, _ = env.reset(seed=seed)
    obs = np.asarray(obs)
    out: list[tuple[Any, ...]] = [(obs.tobytes(),)]
    for _ in range(500):
        obs, reward, terminated, truncated, _ = env.step(int(obs[2] > 0))
        obs = np.asarray(obs)
        out.append((obs.tobytes(), float(reward), bool(terminated), bool(truncated)))
        if terminated or truncated:
            break
    return out


def test_sandboxed_cartpole_replays_local_cartpole_bit_for_bit_numpy(api: Any, image: str) -> None:
    with rnp.SandboxEnv("CartPole-v1", **PARAMS) as env:
        assert isinstance(env, rnp.RemoteEnv)
        assert env.sandbox.image == image and env.source == "CartPole-v1"
        assert env.sandbox.resolved_source == "gym://CartPole-v1"
        # Observations cross through shared memory: sealed memfds the container made and
        # passed over the socket (the host's /dev/shm is not involved).
        assert env.data_plane == "shm"
        assert "/memfd:" in Path("/proc/self/maps").read_text()
        for seed in SEEDS:
            assert remote_episode(env, seed) == local_episode(seed)


def test_sandboxed_cartpole_replays_local_cartpole_bit_for_bit_jax(api: Any, image: str) -> None:
    import rlmesh.jax as rjax

    with rjax.SandboxEnv("gym://CartPole-v1", **PARAMS) as env:
        assert isinstance(env, rjax.RemoteEnv)
        obs, _ = env.reset(seed=SEEDS[0])
        assert type(obs).__module__.startswith("jax")
        for seed in SEEDS:
            assert remote_episode(env, seed) == local_episode(seed)


def test_second_start_with_the_same_inputs_reuses_the_image(api: Any, image: str) -> None:
    started = time.monotonic()
    with rlmesh.SandboxEnv("CartPole-v1", **PARAMS) as env:
        elapsed = time.monotonic() - started
        assert env.sandbox.image == image
        assert env.sandbox.built is False
    assert api.images.get(image).labels["rlmesh.sandbox.inputs"].startswith(image.split(":")[1])
    assert elapsed < 30, f"a warm start took {elapsed:.1f}s"


def test_docker_inspect_shows_every_hardening_flag_and_a_non_root_user(api: Any, image: str) -> None:
    with rnp.SandboxEnv("CartPole-v1", **PARAMS) as env:
        attrs = api.containers.get(env.container_id).attrs
        host = attrs["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
        assert "no-new-privileges" in host["SecurityOpt"]
        assert not any("unconfined" in opt for opt in host["SecurityOpt"])
        assert host["ReadonlyRootfs"] is True
        assert host["Privileged"] is False
        assert host["NetworkMode"] == "none"
        assert host["IpcMode"] == "private"
        assert host["PidMode"] in ("", "private")
        assert host["Init"] is True
        assert host["Memory"] > 0 and host["MemorySwap"] == host["Memory"]
        assert host["PidsLimit"] == 64 + 16
        assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}}
        assert {(u["Name"], u["Soft"], u["Hard"]) for u in host["Ulimits"]} == {
            ("nofile", 4096, 4096),
            ("core", 0, 0),
        }
        tmp_opts = set(host["Tmpfs"]["/tmp"].split(","))
        assert {"noexec", "nosuid", "nodev"} <= tmp_opts
        user = attrs["Config"]["User"]
        uid = int(user.split(":")[0])
        assert uid != 0
        assert uid == (65534 if os.geteuid() == 0 else os.geteuid())
        labels = attrs["Config"]["Labels"]
        assert labels["rlmesh.sandbox"] == "1" and labels["rlmesh.sandbox.owner-pid"] == str(os.getpid())
        # One mount: the session directory, read-only; the host's /dev/shm is never among them.
        mounts = attrs["Mounts"]
        assert len(mounts) == 1
        (mount,) = mounts
        assert mount["Destination"] == "/run/rlmesh" and mount["RW"] is False
        assert not mount["Source"].startswith("/dev/shm")
        assert all(not m["Source"].startswith("/dev/shm") for m in mounts)
        mode = os.stat(mount["Source"]).st_mode
        assert stat.S_IMODE(mode) == 0o700
        assert stat.S_IMODE(os.stat(os.path.join(mount["Source"], "host.sock")).st_mode) == 0o600
        # The env's process really runs as that user, without capabilities.
        top = api.containers.get(env.container_id).top(ps_args="-o uid,pid,args")
        assert top["Processes"] and all(int(p[0]) == uid for p in top["Processes"])
        pid = int(top["Processes"][-1][1])
        status = Path(f"/proc/{pid}/status").read_text()
        caps = {line.split(":")[0]: line.split(":")[1].strip() for line in status.splitlines() if ":" in line}
        assert int(caps["CapEff"], 16) == 0 and int(caps["CapBnd"], 16) == 0
        assert caps["NoNewPrivs"] == "1" and caps["Seccomp"] == "2"
        env.reset(seed=0)


def test_a_container_killed_mid_step_gives_a_typed_error_within_2s_and_leaves_nothing(
    api: Any, image: str
) -> None:
    env = rnp.SandboxEnv("CartPole-v1", **PARAMS)
    failure: list[tuple[BaseException, float]] = []
    stepping = threading.Event()

    def loop() -> None:
        env.reset(seed=0)
        try:
            while True:
                _, _, terminated, truncated, _ = env.step(0)
                stepping.set()
                if terminated or truncated:
                    env.reset()
        except BaseException as exc:
            failure.append((exc, time.monotonic()))

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        assert stepping.wait(30)
        killed = time.monotonic()
        api.containers.get(env.container_id).kill()
        worker.join(5)
        assert not worker.is_alive()
        (exc, when), *_ = failure
        assert isinstance(exc, BrokenError), repr(exc)
        assert when - killed < 2.0
    finally:
        env.close()
        worker.join(5)
    with pytest.raises(rlmesh.ClosedError):
        env.step(0)


def test_a_missing_imports_entry_fails_fast_with_its_name(api: Any, image: str) -> None:
    started = time.monotonic()
    with pytest.raises(SandboxError, match="no_such_module_for_rlmesh"):
        rnp.SandboxEnv("CartPole-v1", imports=["json", "no_such_module_for_rlmesh"], **PARAMS)
    assert time.monotonic() - started < 20


def test_an_orphaned_container_is_reaped(api: Any, image: str) -> None:
    code = f"""
import json, os, signal, sys
import rlmesh.numpy as rnp
env = rnp.SandboxEnv("CartPole-v1", **json.loads({json.dumps(PARAMS)!r}))
print(json.dumps([env.container_id, env.sandbox.address]), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    container_id, address = json.loads(proc.stdout.strip().splitlines()[-1])
    session_dir = os.path.dirname(address[len("unix://") :])
    assert os.path.isdir(session_dir)
    listed = subprocess.run(
        [sys.executable, "-m", "rlmesh", "sandbox", "ls", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows[container_id]["owner_alive"] is False
    # The container noticed its host went away and exited by itself (no --rm: its logs stay).
    deadline = time.monotonic() + 5
    while api.containers.get(container_id).status != "exited" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api.containers.get(container_id).status == "exited"
    reaped = subprocess.run(
        [sys.executable, "-m", "rlmesh", "sandbox", "reap"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    assert container_id[:12] in reaped.stdout
    assert all(c.id != container_id for c in api.containers.list(all=True))
    assert not os.path.exists(session_dir)


def test_sandbox_vector_env_runs_an_evaluation_end_to_end(api: Any, image: str) -> None:
    def lane_policy(observations: np.ndarray) -> np.ndarray:
        return (observations[:, 2] > 0).astype(np.int64)

    def single_policy(observation: np.ndarray) -> int:
        return int(observation[2] > 0)

    seeds = list(range(6))
    expected = rnp.Model(single_policy).run("CartPole-v1", seeds=seeds)
    with rnp.SandboxVectorEnv("CartPole-v1", 2, vectorization_mode="async", **PARAMS) as env:
        assert isinstance(env, rnp.RemoteVectorEnv) and env.num_envs == 2
        assert env.sandbox.image == image
        result = rnp.Model(lane_policy).run(env, seeds=seeds)
    got = [(e.seed, e.steps, e.reward, e.terminated, e.truncated) for e in result.episodes]
    want = [(e.seed, e.steps, e.reward, e.terminated, e.truncated) for e in expected.episodes]
    assert got == want


def test_a_prebuilt_image_running_rlmesh_serve_dials_back(api: Any, image: str) -> None:
    import io

    tag = "rlmesh-sandbox-test-prebuilt:latest"
    dockerfile = f'FROM {image}\nENTRYPOINT ["rlmesh", "serve", "CartPole-v1"]\n'
    api.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, network_mode="none", rm=True)
    try:
        with rnp.SandboxEnv(f"docker://{tag}") as env:
            assert env.sandbox.image == tag
            assert remote_episode(env, 5) == local_episode(5)
        with pytest.raises(ValueError, match="packages"):
            rnp.SandboxEnv(f"docker://{tag}", packages=["gymnasium"])
    finally:
        api.images.remove(tag, force=True)


def test_a_pinned_hub_source_runs_from_a_local_git_repository(
    api: Any, image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "hub" / "org" / "cartpole"
    repo.mkdir(parents=True)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q", "-b", "main")
    (repo / "env.py").write_text(
        "import gymnasium\n\n\ndef make_env(**kwargs):\n    return gymnasium.make('CartPole-v1', **kwargs)\n"
    )
    (repo / "requirements.txt").write_text(PARAMS["packages"][0] + "\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "env")
    sha = git("rev-parse", "HEAD")
    monkeypatch.setenv("HF_ENDPOINT", f"file://{tmp_path / 'hub'}")
    with rnp.SandboxEnv(
        f"hf://org/cartpole@{sha}", trust_remote_code=True, max_episode_steps=20, **PARAMS
    ) as env:
        assert env.sandbox.resolved_source == f"hf://org/cartpole@{sha}"
        assert env.sandbox.image != image
        steps = remote_episode(env, 3)
        # The make kwargs reached make_env: the episode is truncated at 20 steps.
        assert len(steps) <= 21 and (steps[-1][2] or steps[-1][3])
        assert [s[0] for s in steps] == [s[0] for s in local_episode(3)][: len(steps)]


def test_a_sandbox_dropped_unclosed_is_removed_with_a_warning(api: Any, image: str) -> None:
    import gc

    env = rnp.SandboxEnv("CartPole-v1", **PARAMS)
    container_id, session_dir = env.container_id, os.path.dirname(env.sandbox.address[len("unix://") :])
    env.reset(seed=0)
    with pytest.warns(ResourceWarning, match="never closed"):
        del env
        gc.collect()
    assert all(c.id != container_id for c in api.containers.list(all=True))
    assert not os.path.exists(session_dir)


def test_a_module_factory_source_runs_in_the_same_image(api: Any, image: str) -> None:
    # The factory's module comes with the packages (Gymnasium here), so the image is the
    # same as for the id: a source never changes what is installed, only what is served.
    source = "gymnasium.envs.classic_control.cartpole:CartPoleEnv"
    with rnp.SandboxEnv(source, imports=["gymnasium.envs.classic_control"], **PARAMS) as env:
        assert env.sandbox.image == image and env.sandbox.built is False
        assert env.sandbox.resolved_source == source
        for seed in SEEDS[:2]:
            got = remote_episode(env, seed)
            # Unwrapped CartPoleEnv: no TimeLimit, so the episode can only end by termination.
            assert [s[0] for s in got] == [s[0] for s in local_episode(seed)][: len(got)]
