"""Conversion between rlmesh spaces and Gymnasium spaces, both ways.

numpy, gymnasium and ml_dtypes are imported inside the functions here, never
at module import, so ``import rlmesh.spaces`` stays light; a missing one is a
BackendUnavailable naming the extra to install.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any, cast

from .._bridge import IDENTITY
from .._dtypes import DType, dtype_info, is_float, is_integer
from ..errors import BackendUnavailable
from ._base import Space
from ._checks import _MAX_DEPTH, _check_shape
from ._spec import SpaceSpec, _box_details, _int_range_details
from ._walk import fold
from .box import Box
from .dict import Dict
from .discrete import Discrete
from .multi_binary import MultiBinary
from .multi_discrete import MultiDiscrete
from .text import _ALPHANUMERIC, Text
from .tuple import Tuple

# Gymnasium has no unrestricted Text. An unrestricted rlmesh Text exports with
# this charset, as the published package does: a superset of gymnasium's
# alphanumeric default, so its twin accepts ordinary text ("pick up the cup!").
_UNRESTRICTED_TO_GYM = string.printable
# Both import back as unrestricted: gymnasium's default because the published
# package reads it so, and string.printable so rlmesh -> gym -> rlmesh is exact.
_UNRESTRICTED_FROM_GYM = (frozenset(_ALPHANUMERIC), frozenset(_UNRESTRICTED_TO_GYM))

_SUPPORTED_GYM = "Box, Discrete, MultiBinary, MultiDiscrete, Text, Dict, Tuple"


def _gym() -> tuple[Any, Any]:
    try:
        import gymnasium.spaces
        import numpy
    except ImportError as exc:
        raise BackendUnavailable(
            "Gymnasium conversion needs gymnasium and numpy; install them with "
            "pip install 'rlmesh[gymnasium]'"
        ) from exc
    return gymnasium.spaces, numpy


def _bfloat16() -> Any:
    try:
        import ml_dtypes
    except ImportError as exc:
        raise BackendUnavailable(
            "a bfloat16 Box needs ml_dtypes; install it with pip install 'rlmesh[bfloat16]'"
        ) from exc
    return ml_dtypes.bfloat16


_BFLOAT16_BOX: type | None = None


def _bfloat16_box_class() -> type:
    """A gymnasium Box subclass that holds bfloat16 bounds.

    Gymnasium's Box refuses ml_dtypes' bfloat16 (its numpy kind is "V"), and its
    sampler would treat it as an integer type. This subclass is built through
    float32, which holds every bfloat16 value exactly, and samples in float32
    before rounding to bfloat16; rounding is monotone, so samples stay in bounds.
    """
    global _BFLOAT16_BOX
    if _BFLOAT16_BOX is not None:
        return _BFLOAT16_BOX
    gym_spaces, np = _gym()
    bfloat16 = _bfloat16()

    box_base: Any = gym_spaces.Box

    class _BFloat16Box(box_base):  # type: ignore[misc]
        def __init__(self, low: Any, high: Any, seed: Any = None) -> None:
            super().__init__(
                np.asarray(low).astype(np.float32),
                np.asarray(high).astype(np.float32),
                dtype=np.float32,
                seed=seed,
            )
            self.dtype = np.dtype(bfloat16)
            self.low = np.asarray(low).astype(bfloat16)
            self.high = np.asarray(high).astype(bfloat16)

        def sample(self, mask: Any = None, probability: Any = None) -> Any:
            proxy = gym_spaces.Box(
                self.low.astype(np.float32), self.high.astype(np.float32), dtype=np.float32
            )
            # Share the generator, so seeding this space seeds its samples.
            proxy._np_random = self.np_random
            return proxy.sample(mask, probability).astype(bfloat16)

    # Pickle finds the class again through the package's __getattr__.
    _BFloat16Box.__module__ = "rlmesh.spaces"
    _BFloat16Box.__qualname__ = _BFloat16Box.__name__ = "_BFloat16Box"
    _BFLOAT16_BOX = _BFloat16Box
    return _BFloat16Box


def _gym_box_bounds(space: Any, np: Any, dt: DType) -> tuple[list[Any], list[Any]]:
    if is_float(dt):
        # float64 holds every float16/bfloat16/float32 value exactly.
        low = space.low.astype(np.float64).reshape(-1).tolist()
        high = space.high.astype(np.float64).reshape(-1).tolist()
    else:
        # .tolist() of the integer arrays keeps int64/uint64 bounds exact.
        low = [int(v) for v in space.low.reshape(-1).tolist()]
        high = [int(v) for v in space.high.reshape(-1).tolist()]
    return low, high


def from_gymnasium_space(space: Any) -> Space[Any]:
    """Convert a Gymnasium space to the equivalent rlmesh space.

    Supports Box (elementwise bounds kept; int64/uint64 bounds exact), Discrete,
    MultiBinary, MultiDiscrete, Text, Dict (in the space's own order) and Tuple.
    An rlmesh space is returned unchanged.

    A Text whose charset is Gymnasium's default (alphanumeric) or exactly
    ``string.printable`` becomes an unrestricted Text. So Gymnasium's default
    ``Text(4)`` comes back from :func:`to_gymnasium_space` as ``Text(4,
    charset=string.printable)``: wider, holding every string the original held,
    and converting to the same rlmesh space again.

    Raises:
        TypeError: an unsupported space, such as Graph, Sequence or OneOf.
        BackendUnavailable: gymnasium is not installed.
        ValueError: a dtype rlmesh does not carry, or a size over the limits.
    """
    if isinstance(space, Space):
        return space
    gym_spaces, np = _gym()
    return _from_gym(space, gym_spaces, np, 1)


def _from_gym(space: Any, gym_spaces: Any, np: Any, depth: int) -> Space[Any]:
    if depth > _MAX_DEPTH:
        raise ValueError(f"spaces nest deeper than {_MAX_DEPTH} levels")
    if isinstance(space, gym_spaces.Box):
        dt = dtype_info(space.dtype)
        shape = _check_shape(list(space.shape), "shape", False)
        low, high = _gym_box_bounds(space, np, dt)
        details = _box_details(shape, dt, low, high, False, "", False)
        return Box(SpaceSpec._new("box", shape, dt.name, details))
    if isinstance(space, gym_spaces.Discrete):
        return Discrete(int(space.n), start=int(space.start), dtype=space.dtype)
    if isinstance(space, gym_spaces.MultiBinary):
        return MultiBinary(list(space.shape), dtype=space.dtype)
    if isinstance(space, gym_spaces.MultiDiscrete):
        nvec = [int(v) for v in space.nvec.reshape(-1).tolist()]
        start = [int(v) for v in np.asarray(space.start).reshape(-1).tolist()]
        dt = dtype_info(space.dtype)
        if not is_integer(dt):
            raise ValueError(f"MultiDiscrete needs an integer dtype, got {dt.name}")
        dims = _check_shape(list(space.nvec.shape), "shape", False)
        ns, ss = _int_range_details(dt, nvec, start, "", "nvec", False)
        spec = SpaceSpec._new("multi_discrete", dims, dt.name, (("nvec", tuple(ns)), ("start", tuple(ss))))
        return MultiDiscrete._from_spec(spec, IDENTITY)
    if isinstance(space, gym_spaces.Text):
        chars = frozenset(space.character_set)
        charset = "" if chars in _UNRESTRICTED_FROM_GYM else "".join(sorted(chars))
        return Text(int(space.max_length), min_length=int(space.min_length), charset=charset)
    if isinstance(space, gym_spaces.Dict):
        return Dict(
            [(key, _from_gym(child, gym_spaces, np, depth + 1)) for key, child in space.spaces.items()]
        )
    if isinstance(space, gym_spaces.Tuple):
        return Tuple([_from_gym(child, gym_spaces, np, depth + 1) for child in space.spaces])
    raise TypeError(
        f"cannot convert the Gymnasium space {type(space).__name__} ({space!r}); "
        f"rlmesh supports {_SUPPORTED_GYM}"
    )


def to_gymnasium_space(space: Space[Any] | SpaceSpec | Mapping[str, Any]) -> Any:
    """Convert an rlmesh space, spec or spec dict to the equivalent Gymnasium space.

    Box bounds become numpy arrays of the exact dtype (bfloat16 through
    ml_dtypes); an unrestricted Text gets the charset ``string.printable``
    (Gymnasium has no unrestricted Text; its alphanumeric default would reject
    spaces and punctuation), so non-ASCII strings the rlmesh space holds are
    outside its twin; a MultiBinary keeps its dtype (Gymnasium's default is int8).

    Raises:
        BackendUnavailable: gymnasium, or ml_dtypes for a bfloat16 Box, is not installed.
        TypeError: the argument is not a space, spec or spec dict.
        SpecError: a spec dict that is not valid.
    """
    if isinstance(space, Space):
        spec = space.spec
    elif isinstance(space, SpaceSpec):
        spec = space
    elif isinstance(space, Mapping):
        spec = SpaceSpec.from_dict(space)
    else:
        raise TypeError(f"expected an rlmesh space, SpaceSpec or spec dict, got {type(space).__name__}")
    gym_spaces, np = _gym()
    return fold(
        spec,
        lambda leaf, _path: _leaf_to_gym(leaf, gym_spaces, np),
        # A list of pairs: gymnasium would sort the keys of a plain dict.
        lambda _spec, _path, pairs: gym_spaces.Dict(pairs),
        lambda _spec, _path, items: gym_spaces.Tuple(tuple(items)),
    )


def _leaf_to_gym(spec: SpaceSpec, gym_spaces: Any, np: Any) -> Any:
    kind = spec.kind
    if kind == "box":
        shape = tuple(spec.shape)
        name = cast(str, spec.dtype)
        np_dtype = np.dtype(_bfloat16()) if name == "bfloat16" else np.dtype(name)
        arrays = []
        for key in ("low", "high"):
            raw = spec._get(key)
            if spec._get("bounds") == "uniform":
                arrays.append(np.full(shape, raw, dtype=np_dtype))
            else:
                arrays.append(np.array(list(raw), dtype=np_dtype).reshape(shape))
        if name == "bfloat16":
            return _bfloat16_box_class()(arrays[0], arrays[1])
        return gym_spaces.Box(arrays[0], arrays[1], shape=shape, dtype=np_dtype)
    if kind == "discrete":
        return gym_spaces.Discrete(spec._get("n"), start=spec._get("start"), dtype=np.dtype(spec.dtype))
    if kind == "multi_binary":
        shape = tuple(spec.shape)
        gym_space = gym_spaces.MultiBinary(shape[0] if len(shape) == 1 else list(shape))
        # Gymnasium fixes int8 in its constructor; the dtype is a plain attribute
        # that its sampler honours, and keeping ours makes round trips exact.
        gym_space.dtype = np.dtype(spec.dtype)
        return gym_space
    if kind == "multi_discrete":
        shape = tuple(spec.shape)
        np_dtype = np.dtype(spec.dtype)
        nvec = np.array(list(spec._get("nvec")), dtype=np_dtype).reshape(shape)
        start = np.array(list(spec._get("start")), dtype=np_dtype).reshape(shape)
        return gym_spaces.MultiDiscrete(nvec, dtype=np_dtype, start=start)
    # Text, the one leaf kind left.
    return gym_spaces.Text(
        spec._get("max_length"),
        min_length=spec._get("min_length"),
        charset=spec._get("charset") or _UNRESTRICTED_TO_GYM,
    )
