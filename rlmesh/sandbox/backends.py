"""The NumPy and JAX sandbox classes (``rlmesh.numpy.SandboxEnv``, ``rlmesh.jax.SandboxEnv``...).

Each is the sandbox mixin over that backend's remote client, so observations
decode as that backend's arrays. Importing this module imports NumPy and JAX
only through the client modules of the backend a class is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from .env import SandboxEnv, SandboxVectorEnv

__all__ = ["sandbox_class"]

_made: dict[tuple[str, str], type[Any]] = {}


def sandbox_class(backend: str, name: str) -> type[Any]:
    """``SandboxEnv``, ``SandboxVectorEnv`` or ``SandboxModel`` over a backend's client (made once).

    Raises:
        AttributeError: an unknown name.
    """
    key = (backend, name)
    if key not in _made:
        module = importlib.import_module(f"rlmesh.{backend}")
        base: type[Any]
        if name == "SandboxEnv":
            base, client = SandboxEnv, module.RemoteEnv
        elif name == "SandboxVectorEnv":
            base, client = SandboxVectorEnv, module.RemoteVectorEnv
        elif name == "SandboxModel":
            from .model import SandboxModel

            base, client = SandboxModel, module.RemoteModel
        else:
            raise AttributeError(name)
        cls = type(
            name,
            (base, client),
            {
                "__module__": f"rlmesh.{backend}",
                "__qualname__": name,
                "__doc__": (base.__doc__ or "").replace(
                    "(Tensor leaves)", f"with {backend} arrays as leaves ({client.__qualname__})"
                ),
            },
        )
        _made[key] = cls
    return _made[key]
