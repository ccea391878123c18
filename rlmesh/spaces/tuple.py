"""Tuple: a fixed-length sequence of subspaces."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from typing import Any

from .._bridge import IDENTITY, Bridge
from ._base import Space, _as_child, _check_children_depth, _check_seed, _derive_seeds, space_from_spec
from ._checks import _MAX_SUBSPACES
from ._spec import SpaceSpec


class Tuple(Space[tuple[Any, ...]], kind="tuple"):
    """A fixed-length tuple of subspaces.

    Args:
        spaces: the subspaces, in order.
        bridge: converts samples and values for an array library.

    Raises:
        TypeError: an entry is not a space or SpaceSpec.
        ValueError: more subspaces or nesting than the limits.
    """

    def __init__(self, spaces: Iterable[Any], *, bridge: Bridge = IDENTITY) -> None:
        items = list(spaces)
        if len(items) > _MAX_SUBSPACES:
            raise ValueError(f"too many subspaces: {len(items)} > {_MAX_SUBSPACES}")
        children = tuple(_as_child(item, f"Tuple[{i}]") for i, item in enumerate(items))
        _check_children_depth(children)
        spec = SpaceSpec._new("tuple", (), None, (("spaces", tuple(c.spec for c in children)),))
        self._setup(spec, bridge)
        self._spaces = children

    @classmethod
    def _from_spec(cls, spec: SpaceSpec, bridge: Bridge) -> Space[Any]:
        # The subspaces are built by the one spec walk, which calls _from_children.
        return space_from_spec(spec, bridge=bridge)

    @classmethod
    def _from_children(cls, spec: SpaceSpec, bridge: Bridge, children: list[Any]) -> Space[Any]:
        space = cls.__new__(cls)
        space._setup(spec, bridge)
        space._spaces = tuple(children)
        return space

    @property
    def spaces(self) -> tuple[Space[Any], ...]:
        """The subspaces, in order."""
        return self._spaces

    def __getitem__(self, index: int) -> Space[Any]:
        return self._spaces[index]

    def __iter__(self) -> Iterator[Space[Any]]:
        return iter(self._spaces)

    def __len__(self) -> int:
        return len(self._spaces)

    def seed(self, seed: int | None = None) -> int | None:
        """Seed every subspace deterministically from one seed.

        Args:
            seed: a non-negative int, or None to pick a random one.

        Returns:
            The seed used.

        Raises:
            TypeError: ``seed`` is not an int or None.
            ValueError: ``seed`` is negative.
        """
        value = secrets.randbits(64) if seed is None else _check_seed(seed)
        for child, child_seed in zip(self._spaces, _derive_seeds(value, len(self._spaces)), strict=True):
            child.seed(child_seed)
        return value

    def _sample_wire(self) -> tuple[Any, ...]:
        return tuple(child._sample_wire() for child in self._spaces)

    def _contains_wire(self, value: Any) -> bool:
        if not isinstance(value, (tuple, list)) or len(value) != len(self._spaces):
            return False
        return all(child._contains_wire(v) for child, v in zip(self._spaces, value, strict=True))

    def __repr__(self) -> str:
        inner = ", ".join(repr(child) for child in self._spaces)
        return f"Tuple(({inner}{',' if len(self._spaces) == 1 else ''}))"
