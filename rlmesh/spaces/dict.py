"""Dict: named subspaces, in order, behaving as a read-only mapping."""

from __future__ import annotations

import secrets
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from types import MappingProxyType
from typing import Any

from .._bridge import IDENTITY, Bridge
from ._base import Space, _as_child, _check_children_depth, _check_seed, _derive_seeds, space_from_spec
from ._checks import _MAX_SUBSPACES
from ._spec import SpaceSpec


class Dict(Space[dict[str, Any]], kind="dict"):
    """A dict of subspaces with string keys, in insertion order.

    Behaves as a read-only mapping from keys to subspaces. ``key in space`` with
    a string tests for a key; with anything else it tests membership of a value.

    Args:
        mapping_or_pairs: a mapping or an iterable of ``(key, space)`` pairs.
            A plain dict keeps its order (Gymnasium would sort it).
        bridge: converts samples and values for an array library.
        **kwargs: more ``key=space`` entries, after those of ``mapping_or_pairs``.

    Raises:
        TypeError: a key is not a string, or a value is not a space or SpaceSpec.
        ValueError: a duplicate key, or more subspaces or nesting than the limits.
    """

    def __init__(
        self,
        mapping_or_pairs: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        *,
        bridge: Bridge = IDENTITY,
        **kwargs: Any,
    ) -> None:
        if mapping_or_pairs is None:
            pairs: list[Any] = []
        elif isinstance(mapping_or_pairs, Mapping):
            pairs = list(mapping_or_pairs.items())
        else:
            pairs = list(mapping_or_pairs)
        pairs.extend(kwargs.items())
        if len(pairs) > _MAX_SUBSPACES:
            raise ValueError(f"too many subspaces: {len(pairs)} > {_MAX_SUBSPACES}")
        spaces: dict[str, Space[Any]] = {}
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"expected (key, space) pairs, got {pair!r}")
            key, value = pair
            if not isinstance(key, str):
                raise TypeError(f"Dict keys must be strings, got {key!r}")
            if key in spaces:
                raise ValueError(f"duplicate Dict key {key!r}")
            spaces[key] = _as_child(value, f"Dict[{key!r}]")
        _check_children_depth(spaces.values())
        spec = SpaceSpec._new("dict", (), None, (("spaces", tuple((k, s.spec) for k, s in spaces.items())),))
        self._setup(spec, bridge)
        self._spaces = spaces

    @classmethod
    def _from_spec(cls, spec: SpaceSpec, bridge: Bridge) -> Space[Any]:
        # The subspaces are built by the one spec walk, which calls _from_children.
        return space_from_spec(spec, bridge=bridge)

    @classmethod
    def _from_children(cls, spec: SpaceSpec, bridge: Bridge, children: list[Any]) -> Space[Any]:
        space = cls.__new__(cls)
        space._setup(spec, bridge)
        space._spaces = dict(children)
        return space

    @property
    def spaces(self) -> Mapping[str, Space[Any]]:
        """The subspaces, read-only, in order."""
        return MappingProxyType(self._spaces)

    def __getitem__(self, key: str) -> Space[Any]:
        return self._spaces[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._spaces)

    def __len__(self) -> int:
        return len(self._spaces)

    def __contains__(self, item: Any) -> bool:
        if isinstance(item, str):
            return item in self._spaces
        return self.contains(item)

    def keys(self) -> KeysView[str]:
        """The keys, in order."""
        return self._spaces.keys()

    def values(self) -> ValuesView[Space[Any]]:
        """The subspaces, in order."""
        return self._spaces.values()

    def items(self) -> ItemsView[str, Space[Any]]:
        """``(key, subspace)`` pairs, in order."""
        return self._spaces.items()

    def get(self, key: str, default: Any = None) -> Any:
        """The subspace for ``key``, or ``default``."""
        return self._spaces.get(key, default)

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
        for child, child_seed in zip(
            self._spaces.values(), _derive_seeds(value, len(self._spaces)), strict=True
        ):
            child.seed(child_seed)
        return value

    def _sample_wire(self) -> dict[str, Any]:
        return {key: child._sample_wire() for key, child in self._spaces.items()}

    def _contains_wire(self, value: Any) -> bool:
        if not isinstance(value, Mapping) or len(value) != len(self._spaces):
            return False
        if any(key not in value for key in self._spaces):
            return False
        return all(child._contains_wire(value[key]) for key, child in self._spaces.items())

    def __repr__(self) -> str:
        inner = ", ".join(f"{key!r}: {child!r}" for key, child in self._spaces.items())
        return f"Dict({{{inner}}})"
