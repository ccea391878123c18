"""The env of a run or session: dialed, taken as it is, or served in this process.

Part of :mod:`rlmesh.models`.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

from .errors import RLMeshError

if TYPE_CHECKING:
    from .models import ModelBase

__all__ = ["Target"]


def _looks_like_address(text: str) -> bool:
    if "://" in text or text.startswith("/"):
        return True
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit())


class Target:
    """An env opened for a run or session: a client, and what to tear down after."""

    def __init__(self, model: ModelBase[Any, Any], env: Any, close_env: bool) -> None:
        from . import client as _client
        from .server import EnvServer

        self.close_env = close_env
        self.server: Any = None
        self.tmpdir: Any = None
        self.owns_client = True
        self.kind = "local"
        single, vector = model._client_classes or (_client.RemoteEnv, _client.RemoteVectorEnv)
        if isinstance(env, _client.RemoteEnvBase):
            self.client: Any = env
            self.owns_client = False
            self.kind = "handle"
            return
        if isinstance(env, str) and _looks_like_address(env):
            self.kind = "address"
            self.client = _client.dial(env, single=single, vector=vector)
            return
        # A local env, factory or Gymnasium id: serve it in this process for the run.
        self.tmpdir = tempfile.TemporaryDirectory(prefix="rlmesh-run-")
        try:
            self.server = EnvServer(
                env, f"unix://{self.tmpdir.name}/env.sock", close_env_on_shutdown=close_env
            ).start()
            self.client = _client.dial(self.server.address, single=single, vector=vector)
        except BaseException:
            self.close()
            raise

    def abandon(self) -> None:
        """Release what was opened for the run without asking a remote server to stop.

        For a session's finalizer: no request may block there, so an address
        or handle target is only detached from, never shut down.
        """
        self.close_env = False
        self.close()

    def close(self) -> None:
        """Tear down what was opened for the run."""
        try:
            if self.close_env and self.kind in ("address", "handle"):
                try:
                    self.client.shutdown("owner shutdown")
                except RLMeshError:
                    pass  # the server may be gone already
            if self.owns_client and getattr(self, "client", None) is not None:
                self.client.close()
        finally:
            if self.server is not None:
                self.server.shutdown()
                self.server = None
            if self.tmpdir is not None:
                self.tmpdir.cleanup()
                self.tmpdir = None
