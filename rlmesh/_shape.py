"""``Shape``: a tuple of dimensions that also compares equal to a list (layer 1).

The published RLMesh API returns shapes (``Tensor.shape``, ``Tensor.strides``,
``SpaceSpec.shape``, ``Space.shape``, ``MultiBinary.dims``) as fresh lists, so
code written for it checks ``t.shape == [2, 3]``. numpy, JAX, Gymnasium and
PyTorch use tuples, which are hashable (a ``jax.jit`` static argument, a dict
key) and immutable like the tensor they describe. A ``Shape`` is a tuple that
treats a list of the same ints as equal and can be concatenated with one, so
both kinds of code work unchanged.

What still differs from a list: ``isinstance(shape, list)`` is False, a Shape
cannot be changed in place, and its repr is a tuple's. Equality is not
transitive: ``[2] != (2,)`` although both equal ``Shape((2,))``.
"""

from __future__ import annotations

from typing import Any, SupportsIndex, overload

__all__ = ["Shape"]


class Shape(tuple[int, ...]):
    """A tuple of ints that compares equal to the list of the same ints."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return tuple.__eq__(self, tuple(other))
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = tuple.__hash__

    # tuple's stubs only add tuples; a Shape also adds a list, as the published lists did.
    def __add__(self, other: tuple[int, ...] | list[int]) -> Shape:  # type: ignore[override]
        if isinstance(other, (list, tuple)):
            return Shape(tuple.__add__(self, tuple(other)))
        return NotImplemented

    def __radd__(self, other: Any) -> Any:
        if isinstance(other, list):
            # ``[1] + shape`` is list.__add__ first, which refuses a tuple; the
            # published API gives a list there, so give one back.
            return other + list(self)
        if isinstance(other, tuple):
            return Shape(tuple.__add__(other, self))
        return NotImplemented

    def __mul__(self, count: SupportsIndex) -> Shape:
        return Shape(tuple.__mul__(self, count))

    __rmul__ = __mul__

    @overload
    def __getitem__(self, index: SupportsIndex) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> Shape: ...
    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return Shape(tuple.__getitem__(self, index))
        return tuple.__getitem__(self, index)

    def __repr__(self) -> str:
        return tuple.__repr__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Shape, (tuple(self),))


EMPTY_SHAPE = Shape()
