"""Per-step transforms of a space's wire values, each compiled once by the spec walk.

Gymnasium's ``concatenate(space, items, out)`` stacks lane values with one
``singledispatch`` function per space class, dispatching again on every call.
Here each transform walks the spec once (with :func:`~rlmesh.spaces._walk.fold`)
and returns a closure tree, so a call does no dispatch on kinds at all:

* :func:`lane_stacker`: per-lane values stacked into a vector env's batch (a
  client stacks its per-lane actions with it on every step);
* :func:`tuple_restorer`: the tuples msgpack turned into lists, restored (a
  client fixes every observation it receives with it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..tensor import Tensor
from ._walk import TENSOR_KINDS, Path, fold

if TYPE_CHECKING:
    from ._spec import SpaceSpec

__all__ = ["Restorer", "Stacker", "lane_stacker", "tuple_restorer"]

#: Stacks a list of per-lane wire values into one batched wire value.
Stacker = Callable[[list[Any]], Any]

#: Returns a decoded value with its Tuple subvalues as tuples again.
Restorer = Callable[[Any], Any]


def lane_stacker(spec: SpaceSpec) -> Stacker:
    """Compile the function that stacks per-lane wire values of ``spec`` into one batched value.

    The batched value is what a vector endpoint reads: a Dict gives a dict of
    stacked children, a Tuple a list of them; tensor leaves whose lanes are
    all :class:`~rlmesh.tensor.Tensor` become one Tensor with a leading lane
    axis (lanes of anything else are left as the list, for the endpoint to
    read as an array); Discrete and Text leaves become a list of one Python
    value per lane.

    The returned function raises what indexing a lane raises (KeyError,
    IndexError, TypeError) when a lane lacks a key or an entry.
    """
    return fold(spec, _leaf_stacker, _dict_stacker, _tuple_stacker)


def _stack_tensors(lanes: list[Any]) -> Any:
    tensors = [lane if isinstance(lane, Tensor) else None for lane in lanes]
    if all(t is not None for t in tensors):
        first = tensors[0]
        assert first is not None
        data = b"".join(t.tobytes() for t in tensors if t is not None)
        return Tensor(data, (len(lanes), *first.shape), first.dtype)
    return lanes


def _stack_values(lanes: list[Any]) -> list[Any]:
    # A Discrete or Text lane may arrive as a 0-d Tensor; the batch carries Python values.
    return [lane.item() if isinstance(lane, Tensor) else lane for lane in lanes]


def _leaf_stacker(spec: SpaceSpec, path: Path) -> Stacker:
    return _stack_tensors if spec.kind in TENSOR_KINDS else _stack_values


def _dict_stacker(spec: SpaceSpec, path: Path, children: list[tuple[str, Stacker]]) -> Stacker:
    def stack_dict(lanes: list[Any]) -> dict[str, Any]:
        return {key: stack([lane[key] for lane in lanes]) for key, stack in children}

    return stack_dict


def _tuple_stacker(spec: SpaceSpec, path: Path, parts: list[Stacker]) -> Stacker:
    def stack_tuple(lanes: list[Any]) -> list[Any]:
        return [stack([lane[i] for lane in lanes]) for i, stack in enumerate(parts)]

    return stack_tuple


def tuple_restorer(spec: SpaceSpec) -> Restorer | None:
    """Compile the function restoring tuples (msgpack has none) in decoded values of ``spec``.

    Returns None when the space holds no Tuple, so nothing needs doing. The
    function changes only what fits the space: a list where a Tuple space has
    one of the right length becomes a tuple; anything else is returned as it
    is, for the caller's own checks to judge. Dicts keep their wire order,
    which is the space's key order. It raises nothing.
    """
    return fold(spec, _leaf_restorer, _dict_restorer, _tuple_restorer)


def _leaf_restorer(spec: SpaceSpec, path: Path) -> Restorer | None:
    return None


def _dict_restorer(spec: SpaceSpec, path: Path, pairs: list[tuple[str, Restorer | None]]) -> Restorer | None:
    children = dict(pairs)
    if all(fix is None for fix in children.values()):
        return None

    def fix_dict(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for key, item in value.items():
            fix = children.get(key)
            out[key] = item if fix is None else fix(item)
        return out

    return fix_dict


def _tuple_restorer(spec: SpaceSpec, path: Path, parts: list[Restorer | None]) -> Restorer | None:
    count = len(parts)

    def fix_tuple(value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != count:
            return value
        return tuple(item if fix is None else fix(item) for fix, item in zip(parts, value, strict=True))

    return fix_tuple
