"""Array backends: the numpy and JAX bridges, imported only when asked for.

``get(name)`` imports ``rlmesh.backends.<name>`` on first use and caches it;
nothing here imports numpy or JAX by itself.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["BACKENDS", "get"]

#: The backends rlmesh ships.
BACKENDS = ("numpy", "jax")


def get(name: str) -> ModuleType:
    """Return the backend module ``rlmesh.backends.<name>``.

    Raises:
        ValueError: ``name`` is not one of :data:`BACKENDS`.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown array backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"rlmesh.backends.{name}")
