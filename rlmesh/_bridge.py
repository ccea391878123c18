"""How a value tree changes hands between rlmesh's wire form and an array library.

The wire form of a value is a tree of None, bool, int, float, str, bytes,
:class:`~rlmesh.tensor.Tensor`, list, tuple and ``dict[str, ...]``. A *bridge*
turns Tensor leaves into a library's arrays (``decode``) and back (``encode``).
Layer 1 (spaces, values) only knows this protocol; the numpy and JAX bridges
live in ``rlmesh/backends/`` and are imported only when asked for.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Bridge", "IDENTITY", "IdentityBridge"]


@runtime_checkable
class Bridge(Protocol):
    """Converts Tensor leaves to and from one array library's arrays."""

    #: A short name: "rlmesh", "numpy" or "jax".
    name: str

    def decode(self, value: Any) -> Any:
        """Return ``value`` with every Tensor leaf turned into a library array."""
        ...

    def encode(self, value: Any) -> Any:
        """Return ``value`` with every library array turned into a Tensor.

        Raises:
            TypeError: a leaf is neither a wire value nor a library array.
        """
        ...


class IdentityBridge:
    """The plain backend: values stay Tensors and Python primitives."""

    name = "rlmesh"

    def decode(self, value: Any) -> Any:
        """Return ``value`` unchanged."""
        return value

    def encode(self, value: Any) -> Any:
        """Return ``value`` unchanged."""
        return value

    def __repr__(self) -> str:
        return "IdentityBridge()"


IDENTITY = IdentityBridge()
