"""``SandboxModel``: a policy in its own hardened container, used wherever a Model is.

The published API's ``SandboxModel(source, /, *, runtime=None, **params)``:
``source`` is a prebuilt image, ``docker://IMAGE``, whose command serves a
model with ``Model.serve()`` (``rlmesh.numpy.Model(policy).serve(...)`` in a
script). The container starts as a sandboxed env's does
(:func:`rlmesh.sandbox.env.start_sandbox`: hardening, limits, no network,
owner labels, the read-only 0700 session directory); ``Model.serve()`` inside
sees ``RLMESH_DIAL`` and dials back to the host's socket in that directory,
and the host holds a :class:`~rlmesh.remote_model.RemoteModel` session on that
connection. Observations go to the container in the request ring, actions come
back like a sandboxed env's observations.

``rlmesh.run(sandbox_model, env, seeds=...)`` drives a local (or remote) env
with the containerised policy; ``sandbox_model.session(env)`` as any model.
"""

from __future__ import annotations

from typing import Any

from ..remote_model import RemoteModelBase
from .env import SandboxOwner, dial_back_session, start_sandbox

__all__ = ["SandboxModel"]


class SandboxModel(SandboxOwner, RemoteModelBase):
    """A served model in a Docker container, as a :class:`~rlmesh.remote_model.RemoteModel` (Tensor leaves).

    Args:
        source: ``docker://IMAGE``: a prebuilt image whose command runs
            ``Model.serve()`` (it dials back by itself in a sandbox).
        runtime: the published API's GPU/device/volume settings; only None
            is accepted (a sandbox mounts nothing but its session directory).
        memory, cpus, pids_limit, shm_size, network: the container's limits,
            as for :class:`~rlmesh.sandbox.env.SandboxEnv` (no network by default).
        connect_timeout_seconds: how long the container may take to start
            and dial back.
        request_timeout_seconds, spin: as :class:`~rlmesh.remote_model.RemoteModelBase`.
        on_episode_end, on_close: local callbacks, as for any Model.

    Raises:
        ValueError: a source other than a prebuilt image, build parameters
            (the image is prebuilt), or a ``runtime``.
        SandboxError: the container exited (its last log lines are in the
            message) or did not connect in time.
        ConnectError: the container serves an env, not a model.
        BackendUnavailable: the ``docker`` package is missing.

    Lifetime:
        The container starts and connects in the constructor (:meth:`serve`
        returns at once). :meth:`close` (also :meth:`shutdown`, the context
        manager) detaches, then stops and removes the container and its
        session directory; it is idempotent. Runs and sessions leave it
        running, so one SandboxModel serves many runs. An unclosed one is
        removed when garbage collected, with a ``ResourceWarning``; one whose
        process died is removed by the reaper.
    """

    def __init__(
        self,
        source: str,
        /,
        *,
        runtime: Any = None,
        memory: str | int = "2g",
        cpus: float | None = None,
        pids_limit: int | None = None,
        shm_size: str | int | None = None,
        network: str | None = None,
        connect_timeout_seconds: float = 30.0,
        request_timeout_seconds: float | None = None,
        spin: bool | None = None,
        on_episode_end: Any = None,
        on_close: Any = None,
    ) -> None:
        if runtime is not None:
            raise ValueError(
                "runtime= (GPUs, devices, volumes) is not supported: a sandbox mounts nothing but "
                "its session directory"
            )
        if not source.startswith(("docker://", "image://")):
            raise ValueError(f"SandboxModel runs a prebuilt image: pass 'docker://IMAGE', got {source!r}")
        self._ensure_backend()
        sandbox, _ = start_sandbox(
            source,
            num_envs=None,
            vectorization_mode=None,
            base_image=None,
            rlmesh_package=None,
            packages=None,
            imports=None,
            trust_remote_code=False,
            allow_unpinned_hf=False,
            memory=memory,
            cpus=cpus,
            pids_limit=pids_limit,
            shm_size=shm_size,
            network=network,
            connect_timeout_seconds=connect_timeout_seconds,
            make_kwargs={},
        )
        try:
            conn, self._request_timeout = dial_back_session(sandbox, request_timeout_seconds, spin)
            self._setup(conn, on_episode_end, on_close)
        except BaseException:
            sandbox.close()
            raise
        self._own(sandbox, source)

    def serve(self, *args: Any, **kwargs: Any) -> SandboxModel:  # type: ignore[override]
        """The container serves already (it started in the constructor); returns self.

        Raises:
            ClosedError: the sandbox was shut down.
        """
        self._life.check_open()
        return self

    def shutdown(self) -> None:
        """The same as :meth:`close`: stop and remove the container. Idempotent."""
        self.close()

    def close(self) -> None:
        """Detach, then stop and remove the container and its session directory. Idempotent."""
        try:
            super().close()
        finally:
            self._sandbox.close()
