"""The sandbox image's entry point: check imports, make the env, dial the host, serve one session.

Runs in the container as ``python -m rlmesh.sandbox._bootstrap``, configured
by ``RLMESH_BOOTSTRAP_JSON`` (runtime parameters only, so they never cause a
rebuild)::

    {"source": {"kind": "gym"|"factory"|"hf", "target": "..."},
     "make_kwargs": {...}, "imports": [...], "num_envs": null|N,
     "vectorization_mode": null|"sync"|"async", "dial": "unix:///run/rlmesh/host.sock"}

A failed import check prints one line starting with :data:`IMPORT_FAILED`
(the host quotes it in its error) and exits with status 3.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import socket
import sys
import time
from typing import Any

__all__ = ["IMPORT_FAILED", "dial", "main"]

#: The line a failed import check prints; the host finds it in the logs.
IMPORT_FAILED = "rlmesh sandbox: import check failed:"
#: Where an hf:// source's checkout lives in the image (see _image.SOURCE_DIR).
SOURCE_DIR = "/usr/local/rlmesh/source"
#: How long the container keeps trying to reach its host.
DIAL_TIMEOUT = 10.0


def dial(address: str, timeout: float = DIAL_TIMEOUT) -> socket.socket:
    """Connect to the host's Unix socket (``unix:///path``), retrying until ``timeout``.

    Raises:
        ConnectionError: not reachable by then.
    """
    if not address.startswith("unix://"):
        raise ValueError(f"a sandbox dials a unix:// address, got {address!r}")
    path = address[len("unix://") :]
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise ConnectionError(f"could not reach the host at {path}: {exc}") from exc
            time.sleep(0.05)
            continue
        sock.settimeout(None)
        return sock


def _check_imports(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            sys.stdout.write(f"{IMPORT_FAILED} {name!r} cannot be imported ({type(exc).__name__}: {exc})\n")
            sys.stdout.flush()
            raise SystemExit(3) from None


def _target(source: dict[str, Any]) -> Any:
    kind, target = source["kind"], source["target"]
    if kind == "gym":
        return target
    if kind == "hf":
        sys.path.insert(0, SOURCE_DIR)
        module = importlib.import_module("env")
        return module.make_env
    module_name, _, attr = target.rpartition(":")
    return getattr(importlib.import_module(module_name), attr)


def main() -> int:
    """Serve the configured env on one dial-back session; the exit status."""
    config = json.loads(os.environ["RLMESH_BOOTSTRAP_JSON"])
    _check_imports(list(config.get("imports") or []))
    from ..server import EnvServer

    num_envs = config.get("num_envs")
    target = _target(config["source"])
    make_kwargs = dict(config.get("make_kwargs") or {})
    if not isinstance(target, str) and not num_envs and make_kwargs:
        # EnvServer applies make kwargs to ids and to the vector fast path's
        # factory; a single env's factory gets them here.
        target = functools.partial(target, **make_kwargs)
        make_kwargs = {}
    server = EnvServer(
        target,
        # Never used (the session arrives on the dial-back connection); the
        # container's own /tmp, gone with it.
        f"unix:///tmp/rlmesh-{os.getpid()}.sock",  # noqa: S108 - the container's private tmpfs
        num_envs=num_envs,
        vectorization_mode=config.get("vectorization_mode") if num_envs else None,
        make_kwargs=make_kwargs,
    )
    try:
        sock = dial(config.get("dial") or "unix:///run/rlmesh/host.sock")
    except BaseException:
        server.shutdown()
        raise
    server.serve_connection(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
