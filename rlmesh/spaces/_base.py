"""The Space base class, the helpers every space shares, and space_from_spec.

Each space family lives in its own module (box.py, discrete.py, ...) and
declares its kind on its class line, ``class Box(Space[Any], kind="box")``;
:func:`space_from_spec` builds a spec with the class that declared its kind.
The package's ``__init__`` imports every family, so all kinds are known once
``rlmesh.spaces`` is imported.
"""

from __future__ import annotations

import operator
import random
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from .._bridge import IDENTITY, Bridge
from .._shape import Shape
from ._checks import _MAX_DEPTH
from ._spec import SpaceSpec
from ._walk import fold

_T = TypeVar("_T")

# Each space class, by the kind it declares (see Space.__init_subclass__).
_CLASSES: dict[str, type[Space[Any]]] = {}


# -- Space base ---------------------------------------------------------------------


def _check_bridge(bridge: Any) -> Bridge:
    if bridge is None:
        return IDENTITY
    if not isinstance(bridge, Bridge):
        raise TypeError(f"bridge must have name, decode() and encode(), got {type(bridge).__name__}")
    return bridge


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not hasattr(type(seed), "__index__"):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    value = operator.index(seed)
    if value < 0:
        raise ValueError(f"seed must be >= 0, got {value}")
    return value


class Space(ABC, Generic[_T]):
    """Base class of rlmesh spaces: a :class:`SpaceSpec` plus sampling and membership.

    Spaces compare and hash by their spec. Samples go out through the space's
    bridge; values tested by :meth:`contains` come in through it. A subclass
    that names a kind in its class line (``kind="box"``) is the class
    :func:`space_from_spec` builds for specs of that kind.
    """

    _spec: SpaceSpec
    _bridge: Bridge
    _rng: random.Random

    def __init_subclass__(cls, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:
            _CLASSES[kind] = cls

    def _setup(self, spec: SpaceSpec, bridge: Any) -> None:
        self._spec = spec
        self._bridge = _check_bridge(bridge)
        self._rng = random.Random()

    @classmethod
    def _from_spec(cls, spec: SpaceSpec, bridge: Bridge) -> Space[Any]:
        space = cls.__new__(cls)
        space._setup(spec, bridge)
        return space

    @classmethod
    def _from_children(cls, spec: SpaceSpec, bridge: Bridge, children: list[Any]) -> Space[Any]:
        """Build a Dict or Tuple space from its spec and its subspaces, already built.

        ``children`` holds ``(key, space)`` pairs for a Dict, spaces for a Tuple.

        Raises:
            TypeError: the class holds no subspaces.
        """
        raise TypeError(f"{cls.__name__} spaces have no subspaces")

    @property
    def spec(self) -> SpaceSpec:
        """The space's :class:`SpaceSpec`."""
        return self._spec

    @property
    def kind(self) -> str:
        """The space kind, such as "box"."""
        return self._spec.kind

    @property
    def shape(self) -> Shape:
        """The element shape (a tuple equal to the same list); empty for Dict and Tuple."""
        return self._spec.shape

    @property
    def dtype(self) -> str | None:
        """The element dtype name; "str" for Text, None for Dict and Tuple."""
        return self._spec.dtype

    @property
    def bridge(self) -> Bridge:
        """The bridge samples are decoded with and values are encoded with."""
        return self._bridge

    def seed(self, seed: int | None = None) -> int | None:
        """Seed the space's random generator.

        Args:
            seed: a non-negative int for reproducible samples, or None to pick
                a random seed.

        Returns:
            The seed used.

        Raises:
            TypeError: ``seed`` is not an int or None.
            ValueError: ``seed`` is negative.
        """
        value = secrets.randbits(64) if seed is None else _check_seed(seed)
        self._rng = random.Random(value)
        return value

    def sample(self) -> _T:
        """Draw a random element, decoded by the space's bridge."""
        return cast(_T, self._bridge.decode(self._sample_wire()))

    def contains(self, value: Any) -> bool:
        """True if ``value`` (after the bridge's ``encode``) is an element of the space."""
        try:
            wire = self._bridge.encode(value)
        except (TypeError, ValueError, BufferError):
            return False
        return self._contains_wire(wire)

    def __contains__(self, value: Any) -> bool:
        return self.contains(value)

    @abstractmethod
    def _sample_wire(self) -> Any:
        """Draw a random element in wire form (Tensors and Python values)."""

    @abstractmethod
    def _contains_wire(self, value: Any) -> bool:
        """Membership test on an already-encoded value."""

    def to_gymnasium_space(self) -> Any:
        """The equivalent Gymnasium space.

        Raises:
            BackendUnavailable: gymnasium (or ml_dtypes, for bfloat16) is not installed.
        """
        # The conversion knows every space class, so it is imported when called.
        from ._conversion import to_gymnasium_space

        return to_gymnasium_space(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Space):
            return NotImplemented
        return self._spec == other._spec

    def __hash__(self) -> int:
        return hash(self._spec)

    if not TYPE_CHECKING:
        # Hidden from type checkers so that typos in attribute names stay errors.

        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):
                raise AttributeError(name)
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}; rlmesh spaces "
                f"implement a subset of the Gymnasium API, call .to_gymnasium_space() for "
                f"the full Gymnasium space"
            )


# -- helpers for Dict and Tuple ------------------------------------------------------


def _as_child(value: Any, where: str) -> Space[Any]:
    if isinstance(value, Space):
        return value
    if isinstance(value, SpaceSpec):
        return space_from_spec(value)
    raise TypeError(
        f"{where} must be an rlmesh space or SpaceSpec, got {type(value).__name__}; "
        f"convert Gymnasium spaces with rlmesh.spaces.from_gymnasium_space()"
    )


def _check_children_depth(children: Iterable[Space[Any]]) -> None:
    if any(child.spec._depth >= _MAX_DEPTH for child in children):
        raise ValueError(f"spaces nest deeper than {_MAX_DEPTH} levels")


def _derive_seeds(seed: int, count: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(count)]


# -- construction from specs ----------------------------------------------------------


def space_from_spec(
    spec: SpaceSpec | Mapping[str, Any] | Space[Any], *, bridge: Bridge | None = None
) -> Space[Any]:
    """Build the space a spec describes.

    Args:
        spec: a SpaceSpec, its dict form, or a space (rebuilt with ``bridge``).
        bridge: the bridge for the space and all its subspaces; None is the
            plain backend.

    Raises:
        TypeError: ``spec`` is none of those.
        SpecError: a dict that is not a valid spec.
    """
    if isinstance(spec, Space):
        spec = spec.spec
    elif isinstance(spec, Mapping):
        spec = SpaceSpec.from_dict(spec)
    elif not isinstance(spec, SpaceSpec):
        raise TypeError(f"expected a SpaceSpec, a spec dict or a space, got {type(spec).__name__}")
    checked = _check_bridge(bridge)
    return fold(
        spec,
        lambda leaf, _path: _CLASSES[leaf.kind]._from_spec(leaf, checked),
        lambda node, _path, pairs: _CLASSES["dict"]._from_children(node, checked, pairs),
        lambda node, _path, items: _CLASSES["tuple"]._from_children(node, checked, items),
    )
