"""One traversal over space specs, shared by every walker.

Gymnasium walks its spaces with ``functools.singledispatch`` tables, one per
operation (``flatdim``, ``batch_space``, ``create_shared_memory``...), each
registering a function per space class. A :class:`SpaceSpec` is one class
whose ``kind`` says what it is, so rlmesh keeps the same idea with one
structural walk instead: :func:`fold` recurses through Dict and Tuple specs in
their order and hands each leaf, and then each composite with its folded
children, to the caller's functions. Everything that walks a spec goes
through here: the server's observation encoders and action decoders, the
Gymnasium conversion, the sizing of a session's slab rings and channel
rings, and (later) the vector batch slab.

Every leaf has a :data:`Path`, the keys and indices from the root to it:
``("pos",)``, ``(1, "x")``, ``()`` for a spec that is itself a leaf. It is
shown as the published value path (``"$.pos"``, ``"$[1].x"``) by
:func:`value_path`, or as the location in error messages (``"pos"``,
``"[1].x"``) by :func:`location`.

The walks run when a session starts, to build closures or sizes; nothing here
runs per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from .._dtypes import DTYPES

if TYPE_CHECKING:
    # Only annotations: _spec.py itself walks specs with fold(), so it imports this module.
    from ._spec import SpaceSpec

__all__ = [
    "COMPOSITE_KINDS",
    "TENSOR_KINDS",
    "Path",
    "fold",
    "leaf_nbytes",
    "leaves",
    "location",
    "tensor_leaf_sizes",
    "value_path",
    "wire_size_bound",
]

_T = TypeVar("_T")

#: The keys and indices from a spec's root to one of its subspaces.
Path: TypeAlias = tuple[str | int, ...]

#: Kinds whose values are always arrays on the wire.
TENSOR_KINDS = frozenset({"box", "multi_binary", "multi_discrete"})

#: Kinds that hold subspaces.
COMPOSITE_KINDS = frozenset({"dict", "tuple"})

# A vector env's Discrete lanes travel as one int64 tensor (8 bytes a lane).
_DISCRETE_LANE_BYTES = 8

# Allowances in wire_size_bound, per msgpack container, text and tensor record.
_CONTAINER_OVERHEAD = 64
_TEXT_OVERHEAD = 16
_UTF8_MAX = 4  # the most bytes one character takes in UTF-8
_TENSOR_RECORD_OVERHEAD = 128


def location(path: Path) -> str:
    """The path as error messages show it: ``""``, ``"pos"``, ``"[1]"``, ``"pair[0].x"``."""
    parts: list[str] = []
    for step in path:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            parts.append(f".{step}" if parts else step)
    return "".join(parts)


def value_path(path: Path) -> str:
    """The published value path, as conformance warnings carry it: ``"$"``, ``"$.pos"``, ``"$[1].x"``."""
    return "$" + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)


def fold(
    spec: SpaceSpec,
    leaf: Callable[[SpaceSpec, Path], _T],
    dict_node: Callable[[SpaceSpec, Path, list[tuple[str, _T]]], _T],
    tuple_node: Callable[[SpaceSpec, Path, list[_T]], _T],
    path: Path = (),
) -> _T:
    """Fold a spec bottom-up: leaves first, then each composite with its children's results.

    Args:
        spec: the spec to walk.
        leaf: called with each non-composite spec and its path.
        dict_node: called with a Dict spec, its path and its children's results
            as ``(key, result)`` pairs in the spec's key order.
        tuple_node: called with a Tuple spec, its path and its children's
            results in order.
        path: the path of ``spec`` itself, for a walk that starts inside a tree.

    Returns:
        What the call for ``spec`` itself returned.

    Raises:
        Whatever the callbacks raise; the walk itself raises nothing (specs
        are validated and nest at most 32 levels deep).
    """
    kind = spec.kind
    if kind == "dict":
        pairs = [
            (key, fold(child, leaf, dict_node, tuple_node, (*path, key)))
            for key, child in spec._get("spaces")
        ]
        return dict_node(spec, path, pairs)
    if kind == "tuple":
        items = [
            fold(child, leaf, dict_node, tuple_node, (*path, i))
            for i, child in enumerate(spec._get("spaces"))
        ]
        return tuple_node(spec, path, items)
    return leaf(spec, path)


def leaves(spec: SpaceSpec, path: Path = ()) -> Iterator[tuple[Path, SpaceSpec]]:
    """Every non-composite subspace with its path, depth first in the spec's order.

    The order is the one :func:`fold` calls its ``leaf`` function in, and the
    order of the leaves in a value's wire form.
    """
    kind = spec.kind
    if kind == "dict":
        for key, child in spec._get("spaces"):
            yield from leaves(child, (*path, key))
    elif kind == "tuple":
        for i, child in enumerate(spec._get("spaces")):
            yield from leaves(child, (*path, i))
    else:
        yield path, spec


def leaf_nbytes(spec: SpaceSpec, batch: int | None = None) -> int | None:
    """The bytes of one leaf's tensor, or None where the leaf is not sent as a tensor.

    Box, MultiBinary and MultiDiscrete leaves are tensors of the spec's shape
    and dtype. A Discrete leaf is a Python int for one env and an int64 tensor
    of one value a lane for a vector env. Text is always sent as str.

    Args:
        spec: a leaf spec.
        batch: a vector env's number of lanes (the tensor gets a leading
            axis of that length), or None for one env's value.

    Raises:
        ValueError: ``spec`` is a Dict or Tuple spec, or ``batch`` is below 1.
    """
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be None or >= 1, got {batch}")
    kind = spec.kind
    if kind in TENSOR_KINDS:
        assert spec.dtype is not None
        return math.prod(spec.shape) * DTYPES[spec.dtype].itemsize * (1 if batch is None else batch)
    if kind == "discrete":
        return None if batch is None else _DISCRETE_LANE_BYTES * batch
    if kind == "text":
        return None
    raise ValueError(f"a {kind} spec is not a leaf")


def tensor_leaf_sizes(spec: SpaceSpec, batch: int | None = None) -> list[int]:
    """The bytes of every tensor a value of ``spec`` carries, in leaf order.

    Leaves that are not tensors (see :func:`leaf_nbytes`) are left out. A
    session's slab rings are sized from these.

    Args:
        spec: any spec.
        batch: a vector env's number of lanes, or None for one env.

    Raises:
        ValueError: ``batch`` is below 1.
    """
    sizes: list[int] = []
    for _, node in leaves(spec):
        nbytes = leaf_nbytes(node, batch)
        if nbytes is not None:
            sizes.append(nbytes)
    return sizes


def _leaf_wire_bound(spec: SpaceSpec, path: Path) -> int:
    if spec.kind == "text":
        return _UTF8_MAX * int(spec._get("max_length")) + _TEXT_OVERHEAD
    # Discrete counts as a one-element tensor: its int never needs more.
    assert spec.dtype is not None
    return math.prod(spec.shape) * DTYPES[spec.dtype].itemsize + _TENSOR_RECORD_OVERHEAD


def wire_size_bound(spec: SpaceSpec) -> int:
    """An upper bound on the encoded size of one value of ``spec`` (one lane), in bytes.

    Each tensor leaf counts its data plus a record allowance, each Text leaf
    four bytes a character plus an allowance, each Dict or Tuple an allowance
    for its container. A session's request ring is sized from this.
    """
    return fold(
        spec,
        _leaf_wire_bound,
        lambda _spec, _path, pairs: sum(size for _, size in pairs) + _CONTAINER_OVERHEAD,
        lambda _spec, _path, items: sum(items) + _CONTAINER_OVERHEAD,
    )
