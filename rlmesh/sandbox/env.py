"""SandboxEnv and SandboxVectorEnv: a remote client whose env runs in a hardened container.

A sandbox env *is* a :class:`~rlmesh.client.RemoteEnv` (or vector env): the
same calls, spaces and errors. Starting one:

1. reaps sandbox containers whose owner died;
2. resolves the source and builds (or reuses) its image, offline;
3. makes a 0700 session directory on the host and listens there on
   ``host.sock`` (0600), holding ``owner.lock``;
4. runs the hardened container with that directory mounted read-only at
   ``/run/rlmesh`` (never the host's ``/dev/shm``);
5. waits, with a deadline, for the container to dial back; if it exits
   first, raises with its last log lines;
6. runs the client handshake on that connection.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Sequence
from typing import Any

from .._lifecycle import Lifecycle, State
from ..client import DEFAULT_REQUEST_TIMEOUT, RemoteEnv, RemoteVectorEnv, _seconds
from ..errors import SandboxError
from ..net.address import Address
from ..net.framing import DEFAULT_MAX_FRAME
from ..net.stream import SocketStream
from ..wire.client_session import ClientSession
from . import _docker, _image
from ._bootstrap import IMPORT_FAILED
from ._sources import Source, parse_source, resolve_hf

__all__ = [
    "SandboxEnv",
    "SandboxInfo",
    "SandboxMixin",
    "SandboxOwner",
    "SandboxVectorEnv",
    "dial_back_session",
    "start_sandbox",
]

log = logging.getLogger("rlmesh.sandbox")

#: Log lines quoted when a container dies before it connects.
LOG_TAIL = 50
#: How often readiness checks the container while waiting for it to dial back.
POLL = 0.2
#: The environment every sandbox gets: writes only under /tmp, one thread per math library.
BASE_ENV = {
    "HOME": "/tmp",  # noqa: S108 - the container's tmpfs
    "TMPDIR": "/tmp",  # noqa: S108
    "XDG_CACHE_HOME": "/tmp/.cache",  # noqa: S108
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclasses.dataclass(frozen=True)
class SandboxInfo:
    """What a sandbox runs.

    Attributes:
        requested_source: the source as given.
        resolved_source: what it resolved to (a hub source with its commit,
            a Gymnasium id with its scheme).
        container_id: the container's full id.
        image: the image tag it runs.
        address: the host socket the container dialed.
        built: whether this start built the image (False: reused).
    """

    requested_source: str
    resolved_source: str
    container_id: str
    image: str
    address: str
    built: bool


def _string_list(name: str, value: Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a list of strings, not a bare string")
    return list(value)


def _session_root() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        root = os.path.join(runtime, "rlmesh")
        os.makedirs(root, mode=0o700, exist_ok=True)
        return root
    return tempfile.gettempdir()


def _host_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _release(
    api: Any, container_id: str | None, session_dir: str, listener: socket.socket, lock_fd: int
) -> None:
    # Raw resources only (the finalizer must not hold the owner).
    try:
        if container_id is not None:
            _docker.remove_container(api, container_id)
    finally:
        listener.close()
        shutil.rmtree(session_dir, ignore_errors=True)
        try:
            os.close(lock_fd)
        except OSError:
            pass
        api.close()


class _Sandbox:
    """The container, its session directory and listener, and the daemon client: one sandbox's resources.

    Lifetime: everything is made in the constructor (released again if it
    fails). :meth:`close` stops and removes the container, removes the
    session directory and closes the daemon client; it is idempotent. An
    unclosed one is released by a finalizer with a ``ResourceWarning``.
    """

    def __init__(
        self,
        source: Source,
        *,
        base_image: str | None,
        rlmesh_package: str | None,
        packages: list[str],
        imports: list[str],
        allow_unpinned_hf: bool,
        make_kwargs: dict[str, Any],
        num_envs: int | None,
        vectorization_mode: str | None,
        memory: str | int,
        cpus: float | None,
        pids_limit: int | None,
        shm_size: str | int | None,
        network: str,
        connect_timeout: float,
    ) -> None:
        from .. import __version__

        self.container_id: str | None = None
        self.api = _docker.client()
        self.session_dir = ""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lock_fd = -1
        self._life = Lifecycle("a sandbox")
        try:
            _docker.reap(self.api)
            self.resolved = source.requested if source.kind != "gym" else f"gym://{source.target}"
            self.built = False
            config: dict[str, Any] = {
                "source": {"kind": source.kind, "target": source.target},
                "make_kwargs": make_kwargs,
                "imports": imports,
                "num_envs": num_envs,
                "vectorization_mode": vectorization_mode,
                "dial": f"unix://{_docker.CONTAINER_DIR}/{_docker.SOCKET_NAME}",
            }
            if source.kind == "image":
                self.image, command = source.target, None
                self._ensure_pulled(self.image)
            else:
                self.image = self._build(
                    source, base_image, rlmesh_package, packages, allow_unpinned_hf, __version__
                )
                command = None
            security = _docker.daemon_security(self.api)
            user, userns = _docker.container_user(security)
            self._make_session_dir(user)
            environment = {**BASE_ENV, "RLMESH_BOOTSTRAP_JSON": json.dumps(config)}
            if source.kind == "image":
                # A prebuilt image runs its own `rlmesh serve ...`, which dials back when told to.
                environment["RLMESH_DIAL"] = config["dial"]
            lanes = num_envs or 1
            kwargs = _docker.run_kwargs(
                image=self.image,
                user=user,
                userns_mode=userns,
                session_dir=self.session_dir,
                environment=environment,
                labels=_docker.owner_labels(self.session_dir, __version__),
                memory=memory,
                cpus=cpus,
                pids_limit=pids_limit if pids_limit is not None else 64 + 16 * lanes,
                shm_size=shm_size if shm_size is not None else "64m",
                network=network,
                command=command,
            )
            self._life.watch(self, _release, self.api, None, self.session_dir, self.listener, self.lock_fd)
            container = self.api.containers.run(**kwargs)
            self.container_id = str(container.id)
            # Watch the container too, now that it exists.
            self._life.forget()
            self._life.watch(
                self, _release, self.api, self.container_id, self.session_dir, self.listener, self.lock_fd
            )
            self.connection: socket.socket | None = self._await_dial(container, connect_timeout)
        except BaseException:
            self._life.forget()
            _release(self.api, self.container_id, self.session_dir, self.listener, self.lock_fd)
            raise

    def _ensure_pulled(self, image: str) -> None:
        docker = _docker._docker()
        try:
            self.api.images.get(image)
        except docker.errors.ImageNotFound:
            log.warning("sandbox: pulling %s", image)
            try:
                self.api.images.pull(image)
            except Exception as exc:
                raise SandboxError(f"the image {image} is not here and could not be pulled: {exc}") from exc

    def _build(
        self,
        source: Source,
        base_image: str | None,
        rlmesh_package: str | None,
        packages: list[str],
        allow_unpinned_hf: bool,
        version: str,
    ) -> str:
        docker = _docker._docker()
        base = base_image or os.environ.get("RLMESH_SANDBOX_BASE_IMAGE")
        if not base:
            try:
                self.api.images.get(_image.LOCAL_BASE)
                base = _image.LOCAL_BASE
            except docker.errors.ImageNotFound:
                base = _image.PUBLIC_BASE
        self._ensure_pulled(base)
        base_id = str(self.api.images.get(base).id)
        python = _image.image_python(self.api, base_id)
        package = rlmesh_package or os.environ.get("RLMESH_SANDBOX_RLMESH_PACKAGE") or "local"
        if package == "local":
            # None and "local" both mean this rlmesh: its exact sources, built for the image.
            rlmesh_wheel = _image.local_wheel(python)
        else:
            rlmesh_wheel = os.path.abspath(package)  # type: ignore[assignment]
            if not (os.path.isfile(package) and package.endswith(".whl")):
                raise ValueError(f"rlmesh_package must be None, 'local' or a wheel file, got {package!r}")
        from pathlib import Path

        rlmesh_wheel = Path(rlmesh_wheel)
        wheels: list[Path] = []
        requirements = _image.wheel_requirements(rlmesh_wheel)
        for entry in packages:
            if entry.endswith(".whl") and os.path.isfile(entry):
                wheels.append(Path(os.path.abspath(entry)))
                requirements += _image.wheel_requirements(Path(entry))
            else:
                requirements.append(entry)
        names = {_requirement_name(r) for r in requirements}
        if source.kind == "gym" and "gymnasium" not in names:
            host = _host_version("gymnasium")
            requirements.append(f"gymnasium=={host}" if host else "gymnasium")
        source_dir = None
        if source.kind == "hf":
            sha, source_dir = resolve_hf(
                source, allow_unpinned=allow_unpinned_hf, cache=_image.cache_dir() / "hf"
            )
            self.resolved = f"hf://{source.target}@{sha}"
            reqs = source_dir / "requirements.txt"
            if reqs.is_file():
                for line in reqs.read_text().splitlines():
                    line = line.split("#", 1)[0].strip()
                    if line and not line.startswith("-"):
                        requirements.append(line)
        plan = _image.BuildPlan(base, rlmesh_wheel, wheels, _dedupe(requirements), source_dir)
        tag, self.built = _image.ensure_image(self.api, plan, python, base_id, version)
        return tag

    def _make_session_dir(self, user: str) -> None:
        self.session_dir = tempfile.mkdtemp(prefix="rlmesh-sbx-", dir=_session_root())
        os.chmod(self.session_dir, 0o700)
        self.lock_fd = os.open(
            os.path.join(self.session_dir, _docker.LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = os.path.join(self.session_dir, _docker.SOCKET_NAME)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.listener.listen(1)
        uid, _, gid = user.partition(":")
        if os.geteuid() == 0 and uid != "0":
            # Root on the host, nobody in the container: the container's user owns the
            # directory and the socket (no capability lets it past the mode bits).
            os.chown(self.session_dir, int(uid), int(gid or uid))
            os.chown(path, int(uid), int(gid or uid))
        self.address = f"unix://{path}"

    def _await_dial(self, container: Any, timeout: float) -> socket.socket:
        import time

        deadline = time.monotonic() + timeout
        self.listener.settimeout(POLL)
        while True:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                pass
            else:
                conn.settimeout(None)
                return conn
            container.reload()
            if container.status in ("exited", "dead"):
                raise SandboxError(self._death(container))
            if time.monotonic() >= deadline:
                logs = container.logs(tail=LOG_TAIL).decode(errors="replace")
                raise SandboxError(
                    f"the sandbox container {container.short_id} did not connect within {timeout:.1f}s "
                    f"(connect_timeout_seconds); its last log lines:\n{logs}"
                )

    def _death(self, container: Any) -> str:
        state = container.attrs.get("State", {})
        logs = container.logs(tail=LOG_TAIL).decode(errors="replace")
        failed = [line for line in logs.splitlines() if line.startswith(IMPORT_FAILED)]
        head = failed[0] if failed else f"the sandbox container {container.short_id} exited"
        why = f" with status {state.get('ExitCode')}"
        if state.get("OOMKilled"):
            why += " (OOMKilled: the memory limit is too small for the env and its shared memory)"
        return f"{head}{why} before it connected; its last log lines:\n{logs}"

    def close(self) -> None:
        """Stop and remove the container, remove the session directory. Idempotent."""
        if not self._life.begin_close():
            return
        try:
            self._life.forget()
            _release(self.api, self.container_id, self.session_dir, self.listener, self.lock_fd)
        finally:
            self._life.finish_close()

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED (see :mod:`rlmesh._lifecycle`)."""
        return self._life.state

    def __enter__(self) -> _Sandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _requirement_name(req: str) -> str:
    import re

    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    return match[1].lower().replace("_", "-") if match else req


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return [i for i in items if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]


def start_sandbox(
    source: str,
    *,
    num_envs: int | None,
    vectorization_mode: str | None,
    base_image: str | None,
    rlmesh_package: str | None,
    packages: Sequence[str] | None,
    imports: Sequence[str] | None,
    trust_remote_code: bool,
    allow_unpinned_hf: bool,
    memory: str | int,
    cpus: float | None,
    pids_limit: int | None,
    shm_size: str | int | None,
    network: str | None,
    connect_timeout_seconds: float,
    make_kwargs: dict[str, Any],
) -> tuple[_Sandbox, Source]:
    """Check the parameters, then build and start a sandbox that has dialed back (see the module).

    Raises:
        TypeError: a bare string for ``packages``/``imports``, or make kwargs
            that are not JSON data.
        ValueError: a bad source or option (see :class:`SandboxEnv`).
        SandboxError: the build failed, or the container died or did not
            connect in time (with its last log lines).
        BackendUnavailable: the ``docker`` package is missing.
    """
    parsed = parse_source(source)
    package_list = _string_list("packages", packages)
    import_list = _string_list("imports", imports)
    if parsed.kind == "image":
        given = {
            "base_image": base_image,
            "rlmesh_package": rlmesh_package,
            "packages": package_list,
            "imports": import_list,
            "trust_remote_code": trust_remote_code,
            "allow_unpinned_hf": allow_unpinned_hf,
            "make kwargs": make_kwargs,
            "num_envs": num_envs,
        }
        bad = sorted(name for name, value in given.items() if value)
        if bad:
            raise ValueError(
                f"{', '.join(bad)} apply to sources the sandbox builds, not to a prebuilt image "
                "(its own command says what it serves)"
            )
    if parsed.kind == "hf" and not trust_remote_code:
        raise ValueError(
            f"{source!r} runs code from a hub repository: pass trust_remote_code=True to allow it"
        )
    if parsed.kind != "hf" and allow_unpinned_hf:
        raise ValueError("allow_unpinned_hf applies to hf:// sources only")
    network = "none" if network is None else network
    if network == "host" or network.startswith("container:"):
        raise ValueError(
            f"network={network!r} would share a network namespace with the host or another container; "
            'use "none" (the default) or a bridge network'
        )
    try:
        json.dumps(make_kwargs)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the make kwargs must be JSON data (they travel to the container): {exc}") from exc
    timeout = _seconds("connect_timeout_seconds", connect_timeout_seconds, 30.0)
    sandbox = _Sandbox(
        parsed,
        base_image=base_image,
        rlmesh_package=rlmesh_package,
        packages=package_list,
        imports=import_list,
        allow_unpinned_hf=allow_unpinned_hf,
        make_kwargs=make_kwargs,
        num_envs=num_envs,
        vectorization_mode=vectorization_mode,
        memory=memory,
        cpus=cpus,
        pids_limit=pids_limit,
        shm_size=shm_size,
        network=network,
        connect_timeout=timeout if timeout is not None else 30.0,
    )
    return sandbox, parsed


def dial_back_session(
    sandbox: _Sandbox, request_timeout_seconds: float | None, spin: bool | None
) -> tuple[ClientSession, float | None]:
    """The client session over the connection the sandbox's container dialed back on.

    Returns the session and the request timeout it uses. The connection is
    taken from ``sandbox`` (its ``connection`` becomes None).

    Raises:
        ValueError: a bad ``request_timeout_seconds``. ConnectError,
            VersionMismatch: the handshake failed.
    """
    request_timeout = _seconds("request_timeout_seconds", request_timeout_seconds, DEFAULT_REQUEST_TIMEOUT)
    connection, sandbox.connection = sandbox.connection, None
    assert connection is not None
    conn = ClientSession(
        Address("unix", path=sandbox.address[len("unix://") :]),
        connect_timeout=None,
        request_timeout=request_timeout,
        shared_memory=True,
        max_message_bytes=DEFAULT_MAX_FRAME,
        spin=spin,
        stream=SocketStream(connection),
    )
    return conn, request_timeout


class SandboxOwner:
    """The owned container of a sandbox client (env or model) and what it reports about it."""

    _sandbox: _Sandbox
    _info: SandboxInfo

    def _own(self, sandbox: _Sandbox, source: str) -> None:
        self._sandbox = sandbox
        self._info = SandboxInfo(
            requested_source=source,
            resolved_source=sandbox.resolved,
            container_id=sandbox.container_id or "",
            image=sandbox.image,
            address=sandbox.address,
            built=sandbox.built,
        )

    @property
    def sandbox(self) -> SandboxInfo:
        """The source, resolved source, container id and image of this sandbox."""
        return self._info

    @property
    def source(self) -> str:
        """The source as given."""
        return self._info.requested_source

    @property
    def container_id(self) -> str:
        """The container's full id."""
        return self._info.container_id


class SandboxMixin(SandboxOwner):
    """What SandboxEnv and SandboxVectorEnv add to their remote client class: the owned container."""

    _source: Source

    def _start(
        self,
        source: str,
        num_envs: int | None,
        vectorization_mode: str | None,
        request_timeout_seconds: float | None,
        spin: bool | None,
        params: dict[str, Any],
    ) -> None:
        self._ensure_backend()  # type: ignore[attr-defined]
        sandbox, parsed = start_sandbox(
            source, num_envs=num_envs, vectorization_mode=vectorization_mode, **params
        )
        try:
            conn, self._request_timeout = dial_back_session(sandbox, request_timeout_seconds, spin)
            self._attach(conn)  # type: ignore[attr-defined]
        except BaseException:
            sandbox.close()
            raise
        self._own(sandbox, source)
        self._source = parsed

    def close(self) -> None:
        """Detach the client, then stop and remove the container and its session directory. Idempotent."""
        try:
            super().close()  # type: ignore[misc]
        finally:
            self._sandbox.close()


_DOC_ARGS = """
    Args:
        source: a Gymnasium id (``CartPole-v1``), ``gym://ID``, ``module:factory``
            (installed by ``packages``), ``docker://IMAGE`` (a prebuilt image
            running ``rlmesh serve``) or ``hf://ORG/REPO@SHA``.
        base_image: the image to build on (default ``$RLMESH_SANDBOX_BASE_IMAGE``,
            else ``rlmesh-base:bookworm`` if present, else ``python:3.11-slim``).
        rlmesh_package: None or "local": a wheel of this rlmesh built from its
            checkout for the image's Python; or the path of a wheel.
        packages: pip requirements or wheel files installed in the image
            (offline, from a wheelhouse the host downloads).
        imports: module names imported at start-up; a failure names the module.
        trust_remote_code: allow an hf:// source's code to run.
        allow_unpinned_hf: allow an hf:// revision that is not a full commit.
        memory: the container's memory limit (swap included; shared memory
            counts against it). cpus: a CPU limit (None: none).
        pids_limit: processes and threads (default 64 + 16 per env).
        shm_size: the container's private ``/dev/shm`` (default 64m).
        network: "none" (default) or a bridge network; never "host".
        connect_timeout_seconds: how long the container may take to start
            and dial back (the image build is not counted).
        request_timeout_seconds, spin: as :class:`~rlmesh.client.RemoteEnvBase`.

    Raises:
        SandboxError: the image build failed, or the container exited (its
            last log lines and the failed import are in the message) or did
            not connect in time. ValueError, TypeError: bad arguments.
        BackendUnavailable: the ``docker`` package is missing.

    Lifetime:
        :meth:`close` detaches, then stops and removes the container and the
        session directory (idempotent; the context manager calls it). An
        unclosed sandbox is removed when garbage collected, with a
        ``ResourceWarning``; one whose process died is removed by the
        reaper (``rlmesh sandbox reap``, and every sandbox start).
"""


class SandboxEnv(SandboxMixin, RemoteEnv):
    """An env in a hardened Docker container, as a :class:`~rlmesh.client.RemoteEnv` (Tensor leaves)."""

    __doc__ = (__doc__ or "") + _DOC_ARGS

    def __init__(
        self,
        source: str,
        /,
        *,
        base_image: str | None = None,
        rlmesh_package: str | None = None,
        packages: Sequence[str] | None = None,
        imports: Sequence[str] | None = None,
        trust_remote_code: bool = False,
        allow_unpinned_hf: bool = False,
        memory: str | int = "2g",
        cpus: float | None = None,
        pids_limit: int | None = None,
        shm_size: str | int | None = None,
        network: str | None = None,
        connect_timeout_seconds: float = 30.0,
        request_timeout_seconds: float | None = None,
        spin: bool | None = None,
        **gym_make_kwargs: Any,
    ) -> None:
        if "num_envs" in gym_make_kwargs:
            raise TypeError("SandboxEnv serves one env; use SandboxVectorEnv for num_envs")
        params = {
            "base_image": base_image,
            "rlmesh_package": rlmesh_package,
            "packages": packages,
            "imports": imports,
            "trust_remote_code": trust_remote_code,
            "allow_unpinned_hf": allow_unpinned_hf,
            "memory": memory,
            "cpus": cpus,
            "pids_limit": pids_limit,
            "shm_size": shm_size,
            "network": network,
            "connect_timeout_seconds": connect_timeout_seconds,
            "make_kwargs": gym_make_kwargs,
        }
        self._start(source, None, None, request_timeout_seconds, spin, params)


class SandboxVectorEnv(SandboxMixin, RemoteVectorEnv):
    """A vector env in a hardened Docker container, as a :class:`~rlmesh.client.RemoteVectorEnv`.

    ``num_envs`` (>= 2) lanes, run in the container as ``vectorization_mode``
    asks ("async": worker processes; "sync": one process; None: the server's
    choice).
    """

    __doc__ = (__doc__ or "") + _DOC_ARGS

    def __init__(
        self,
        source: str,
        /,
        num_envs: int,
        *,
        vectorization_mode: str | None = None,
        base_image: str | None = None,
        rlmesh_package: str | None = None,
        packages: Sequence[str] | None = None,
        imports: Sequence[str] | None = None,
        trust_remote_code: bool = False,
        allow_unpinned_hf: bool = False,
        memory: str | int = "2g",
        cpus: float | None = None,
        pids_limit: int | None = None,
        shm_size: str | int | None = None,
        network: str | None = None,
        connect_timeout_seconds: float = 30.0,
        request_timeout_seconds: float | None = None,
        spin: bool | None = None,
        **env_make_kwargs: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int):
            raise TypeError("num_envs must be an int")
        if num_envs < 2:
            raise ValueError(f"SandboxVectorEnv needs num_envs >= 2, got {num_envs}; use SandboxEnv for one")
        if vectorization_mode not in (None, "sync", "async"):
            raise ValueError(
                f'vectorization_mode must be "sync", "async" or None, got {vectorization_mode!r}'
            )
        params = {
            "base_image": base_image,
            "rlmesh_package": rlmesh_package,
            "packages": packages,
            "imports": imports,
            "trust_remote_code": trust_remote_code,
            "allow_unpinned_hf": allow_unpinned_hf,
            "memory": memory,
            "cpus": cpus,
            "pids_limit": pids_limit,
            "shm_size": shm_size,
            "network": network,
            "connect_timeout_seconds": connect_timeout_seconds,
            "make_kwargs": env_make_kwargs,
        }
        self._start(source, num_envs, vectorization_mode, request_timeout_seconds, spin, params)
