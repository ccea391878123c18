"""How a value tree changes hands between rlmesh's wire form and an array library.

The wire form of a value is a tree of None, bool, int, float, str, bytes,
:class:`~rlmesh.tensor.Tensor`, list, tuple and ``dict[str, ...]``. A *bridge*
turns Tensor leaves into a library's arrays (``decode``) and back (``encode``).
Layer 1 (spaces, values) only knows this protocol; the numpy and JAX bridges
live in ``rlmesh/backends/`` and are imported only when asked for.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .tensor import Tensor

__all__ = ["Bridge", "IDENTITY", "IdentityBridge", "TreeBridge"]


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


class TreeBridge:
    """A bridge that walks value trees; subclasses convert the leaves.

    ``decode`` turns every Tensor leaf into an array with :meth:`decode_tensor`;
    ``encode`` offers every non-container leaf to :meth:`encode_leaf`.
    Dicts, lists and tuples keep their kind; other values pass unchanged.
    """

    name = "tree"

    def decode_tensor(self, tensor: Tensor) -> Any:
        """The library array for one tensor."""
        raise NotImplementedError

    def encode_leaf(self, value: Any) -> Any:
        """The wire value for one leaf (a Tensor for an array, a primitive for a scalar)."""
        return value

    def decode(self, value: Any) -> Any:
        """Return ``value`` with Tensor leaves as library arrays."""
        kind = type(value)
        if kind is Tensor:
            return self.decode_tensor(value)
        if kind is dict:
            return {k: self.decode(v) for k, v in value.items()}
        if kind is list:
            return [self.decode(v) for v in value]
        if kind is tuple:
            return tuple(self.decode(v) for v in value)
        return value

    def encode(self, value: Any) -> Any:
        """Return ``value`` with library arrays and scalars as Tensors and primitives."""
        kind = type(value)
        if kind is dict:
            return {k: self.encode(v) for k, v in value.items()}
        if kind is list:
            return [self.encode(v) for v in value]
        if kind is tuple:
            return tuple(self.encode(v) for v in value)
        return self.encode_leaf(value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
