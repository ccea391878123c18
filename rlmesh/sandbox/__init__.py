"""Docker sandboxes: an env with its own dependency stack in a hardened container.

``SandboxEnv("CartPole-v1")`` builds (or reuses) an image offline, runs it with
no capabilities, no network, a read-only root, limits and a non-root user,
and connects a remote client through a Unix socket in a 0700 session
directory mounted read-only into the container. See
``docs/internals.md`` and the design in ``sandbox-design.md``.

Names load lazily: importing this package never imports ``docker``, NumPy or
Gymnasium (the container's entry point, :mod:`rlmesh.sandbox._bootstrap`,
lives here too and needs none of them).

Layer 6.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .env import (
        SandboxEnv as SandboxEnv,
        SandboxInfo as SandboxInfo,
        SandboxVectorEnv as SandboxVectorEnv,
    )
    from .model import SandboxModel as SandboxModel

__all__ = ["SandboxEnv", "SandboxInfo", "SandboxModel", "SandboxVectorEnv"]

_LAZY = {"SandboxEnv": "env", "SandboxInfo": "env", "SandboxModel": "model", "SandboxVectorEnv": "env"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rlmesh.sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
