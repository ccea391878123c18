"""The Docker daemon: the client, labels, the hardened run arguments, the reaper.

The ``docker`` package (docker-py) is imported here only, lazily, on the
first call that needs the daemon: ``import rlmesh`` and ``import
rlmesh.sandbox`` never load it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
from typing import Any

from ..errors import BackendUnavailable, SandboxError

__all__ = [
    "CONTAINER_DIR",
    "LABEL",
    "client",
    "container_user",
    "list_sandboxes",
    "owner_labels",
    "reap",
    "remove_container",
    "run_kwargs",
]

#: Every sandbox container carries this label (value "1"); the reaper and ``ls`` filter on it.
LABEL = "rlmesh.sandbox"
#: Where the session directory appears in the container (read-only).
CONTAINER_DIR = "/run/rlmesh"
#: The socket file, in the session directory, that the container dials.
SOCKET_NAME = "host.sock"
#: The lock file, in the session directory, held by the owner while it lives.
LOCK_NAME = "owner.lock"
#: Seconds per request to the daemon (builds stream for longer, per chunk).
API_TIMEOUT = 600
#: uid:gid of the container when the host user is root: nobody, never uid 0.
UNPRIVILEGED = (65534, 65534)
#: The container's /tmp: the only writable place, no exec, bounded.
TMPFS = {"/tmp": "rw,nosuid,nodev,noexec,size=64m"}  # noqa: S108 - the container's own tmpfs


def _docker() -> Any:
    try:
        import docker
    except ImportError as exc:
        raise BackendUnavailable(
            'Docker sandboxes need the docker package: pip install "rlmesh[sandbox]"'
        ) from exc
    return docker


def client() -> Any:
    """A docker-py client for the local daemon (``DOCKER_HOST``, else the CLI's current context).

    Raises:
        BackendUnavailable: (an ImportError) the ``docker`` package is missing.
        SandboxError: no daemon answers, or it is remote (a remote daemon
            cannot share this host's Unix sockets and memory).
    """
    docker = _docker()
    host = os.environ.get("DOCKER_HOST")
    if not host:
        # docker-py ignores the CLI's contexts (docker-py#3146); read the current one.
        with contextlib.suppress(Exception):
            host = docker.context.ContextAPI.get_current_context().Host
    host = host or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        raise SandboxError(
            f"the Docker daemon at {host} is not on this host: a sandbox shares a Unix socket "
            "and memory with its container, so it needs a local daemon (unix://)"
        )
    # Knock first: docker-py's client asks the daemon for its API version while it is
    # built, and a refused connection there leaves its socket unclosed (a ResourceWarning).
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(API_TIMEOUT)
        probe.connect(host[len("unix://") :])
    except OSError as exc:
        raise SandboxError(f"no Docker daemon answers at {host}: {exc}") from exc
    finally:
        probe.close()
    try:
        api = docker.DockerClient(base_url=host, timeout=API_TIMEOUT)
    except Exception as exc:
        raise SandboxError(f"no Docker daemon answers at {host}: {exc}") from exc
    try:
        api.ping()
    except Exception as exc:
        api.close()
        raise SandboxError(f"no Docker daemon answers at {host}: {exc}") from exc
    return api


def daemon_security(api: Any) -> set[str]:
    """The daemon's security options by name ("rootless", "userns", "seccomp"...)."""
    names = set()
    for entry in api.info().get("SecurityOptions") or []:
        for part in str(entry).split(","):
            key, _, value = part.partition("=")
            if key == "name":
                names.add(value)
    return names


def container_user(
    security: set[str], uid: int | None = None, gid: int | None = None
) -> tuple[str, str | None]:
    """``(user, userns_mode)`` for ``docker run`` (sandbox-design.md section 4).

    The container must own the 0600 socket without any capability: the host
    user's uid:gid on a rootful daemon; uid 65534 when the host user is root
    (never uid 0 in the sandbox; the session directory is chowned to it);
    0:0 under rootless Docker (the container's root *is* the host user); the
    host uid with ``--userns=host`` under userns-remap.
    """
    uid = os.geteuid() if uid is None else uid
    gid = os.getegid() if gid is None else gid
    if "rootless" in security:
        return "0:0", None
    if uid == 0:
        return f"{UNPRIVILEGED[0]}:{UNPRIVILEGED[1]}", ("host" if "userns" in security else None)
    return f"{uid}:{gid}", ("host" if "userns" in security else None)


def _proc_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    # Field 22 (starttime), counted after the command name's closing parenthesis.
    return text[text.rindex(")") + 2 :].split()[19]


def _pidns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def owner_labels(session_dir: str, version: str) -> dict[str, str]:
    """The labels that let the reaper tell whether a container's owner is alive."""
    return {
        LABEL: "1",
        f"{LABEL}.owner-pid": str(os.getpid()),
        f"{LABEL}.owner-pidns": _pidns(),
        f"{LABEL}.owner-start": _proc_start(os.getpid()) or "",
        f"{LABEL}.session-dir": session_dir,
        f"{LABEL}.version": version,
    }


def run_kwargs(
    *,
    image: str,
    user: str,
    userns_mode: str | None,
    session_dir: str,
    environment: dict[str, str],
    labels: dict[str, str],
    memory: str | int,
    cpus: float | None,
    pids_limit: int,
    shm_size: str | int,
    network: str,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``containers.run`` for a hardened sandbox (sandbox-design.md section 5).

    No capabilities, no new privileges, the default seccomp profile, a
    read-only root with a noexec tmpfs ``/tmp``, no network unless asked,
    memory (swap included), pids and optionally CPU limits, a private IPC
    namespace with its own ``/dev/shm``, an init process, bounded logs and
    descriptors, no core dumps. The only mount is the session directory,
    read-only. Never privileged, never the host's IPC, PID or network
    namespace, never the host's ``/dev/shm``.
    """
    docker = _docker()
    kwargs: dict[str, Any] = {
        "image": image,
        "detach": True,
        "user": user,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": dict(TMPFS),
        "network_mode": network,
        "ipc_mode": "private",
        "shm_size": shm_size,
        "mem_limit": memory,
        "memswap_limit": memory,
        "pids_limit": pids_limit,
        "init": True,
        "ulimits": [
            docker.types.Ulimit(name="nofile", soft=4096, hard=4096),
            docker.types.Ulimit(name="core", soft=0, hard=0),
        ],
        "log_config": docker.types.LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
        "volumes": {session_dir: {"bind": CONTAINER_DIR, "mode": "ro"}},
        "environment": environment,
        "labels": labels,
    }
    if userns_mode is not None:
        kwargs["userns_mode"] = userns_mode
    if cpus is not None:
        kwargs["nano_cpus"] = int(cpus * 1e9)
    if command is not None:
        kwargs["command"] = command
    return kwargs


def remove_container(api: Any, container_id: str, *, timeout: int = 1) -> None:
    """Stop (SIGTERM, then SIGKILL after ``timeout`` s) and remove a container; a gone one is fine."""
    docker = _docker()
    try:
        container = api.containers.get(container_id)
    except docker.errors.NotFound:
        return
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        container.stop(timeout=timeout)
    with contextlib.suppress(docker.errors.NotFound):
        container.remove(force=True)


def owner_alive(labels: dict[str, str]) -> bool | None:
    """Whether a sandbox container's owner still lives (None: cannot tell).

    The owner holds ``flock`` on ``owner.lock`` in its session directory:
    taking it means the owner is gone (immune to pid reuse, blind to pid
    namespaces). Without the directory, the owner pid, its start time and
    its pid namespace decide, when the namespace is this process's.
    """
    session_dir = labels.get(f"{LABEL}.session-dir", "")
    lock_path = os.path.join(session_dir, LOCK_NAME)
    if session_dir and os.path.exists(lock_path):
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
    if labels.get(f"{LABEL}.owner-pidns") != _pidns():
        return None
    try:
        pid = int(labels.get(f"{LABEL}.owner-pid", ""))
    except ValueError:
        return None
    start = _proc_start(pid)
    return start is not None and start == labels.get(f"{LABEL}.owner-start")


def list_sandboxes(api: Any) -> list[dict[str, Any]]:
    """Every rlmesh sandbox container: id, name, image, status, owner pid and whether it lives."""
    rows = []
    for container in api.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
        labels = container.labels or {}
        rows.append(
            {
                "id": container.id,
                "name": container.name,
                "image": (container.image.tags or [container.image.id])[0] if container.image else "?",
                "status": container.status,
                "owner_pid": labels.get(f"{LABEL}.owner-pid"),
                "owner_alive": owner_alive(labels),
                "session_dir": labels.get(f"{LABEL}.session-dir"),
            }
        )
    return rows


def reap(api: Any, *, dry_run: bool = False) -> list[str]:
    """Remove sandbox containers whose owner died, and their session directories; their ids.

    A container whose owner cannot be judged (another pid namespace and
    no directory) is left alone.
    """
    reaped = []
    for row in list_sandboxes(api):
        if row["owner_alive"] is not False:
            continue
        reaped.append(row["id"])
        if dry_run:
            continue
        remove_container(api, row["id"], timeout=0)
        session_dir = row["session_dir"]
        if session_dir and os.path.basename(session_dir).startswith("rlmesh-sbx-"):
            shutil.rmtree(session_dir, ignore_errors=True)
    return reaped
