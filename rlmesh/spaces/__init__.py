"""Spaces: what an env's observations and actions look like, without numpy.

A space has two faces. :class:`SpaceSpec` is the pure description: frozen,
hashable, and convertible to and from a msgpack-able dict (``to_dict`` /
``from_dict``), which is how spaces cross the wire in the handshake. The
:class:`Space` classes wrap a spec with behaviour: seeded sampling through
Python's :class:`random.Random`, membership tests, and conversion to and from
Gymnasium spaces.

This package is layer 1: it imports only the standard library and rlmesh's own
layer-0 modules. numpy, gymnasium and ml_dtypes are imported lazily, inside the
Gymnasium conversion functions, so ``import rlmesh.spaces`` stays light and
every space works on a machine without numpy.

Values leave a space through its *bridge* (:mod:`rlmesh._bridge`): ``sample()``
returns ``bridge.decode(wire_value)`` and ``contains(v)`` first normalises ``v``
with ``bridge.encode``. With the default identity bridge, array-valued samples
are :class:`~rlmesh.tensor.Tensor` objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# General layout, lowest first (a module imports only from those above it;
# specs and Space import the conversion and space_from_spec only when called):
#   _checks.py       limits, and the check that picks SpecError or TypeError/ValueError
#   _arrays.py       reading array-likes, float rounding, building Tensors
#   _walk.py         the one traversal over specs (leaves, fold) and the sizes built on it
#   _spec.py         SpaceSpec, its wire dict, validation of untrusted specs
#   _base.py         the Space base class, space_from_spec, Dict/Tuple helpers
#   box.py, discrete.py, multi_binary.py, multi_discrete.py, text.py, dict.py,
#   tuple.py         one space family each
#   _conversion.py   to and from Gymnasium spaces (numpy and gymnasium imported lazily)
#   _values.py       per-step transforms of wire values (lane stacking, tuples), compiled by the walk
from ._base import Space as Space, space_from_spec as space_from_spec
from ._conversion import (
    _bfloat16_box_class,
    from_gymnasium_space as from_gymnasium_space,
    to_gymnasium_space as to_gymnasium_space,
)
from ._spec import SpaceSpec as SpaceSpec
from .box import Box as Box
from .dict import Dict as Dict
from .discrete import Discrete as Discrete
from .multi_binary import MultiBinary as MultiBinary
from .multi_discrete import MultiDiscrete as MultiDiscrete
from .text import Text as Text
from .tuple import Tuple as Tuple

__all__ = [
    "Box",
    "Dict",
    "Discrete",
    "MultiBinary",
    "MultiDiscrete",
    "Space",
    "SpaceSpec",
    "Text",
    "Tuple",
    "from_gymnasium_space",
    "space_from_spec",
    "to_gymnasium_space",
]

# The public names say they live here, as they did before this package was
# split into modules: reprs, docs and pickles name rlmesh.spaces.Box, and
# pickles made by either layout load in the other.
for _public in (
    Box,
    Dict,
    Discrete,
    MultiBinary,
    MultiDiscrete,
    Space,
    SpaceSpec,
    Text,
    Tuple,
    from_gymnasium_space,
    space_from_spec,
    to_gymnasium_space,
):
    _public.__module__ = __name__
del _public

if not TYPE_CHECKING:
    # Hidden from type checkers, which would otherwise accept any name imported from here.

    def __getattr__(name: str) -> Any:
        # Pickle finds the bfloat16 gymnasium Box class here, built on first use.
        if name == "_BFloat16Box":
            return _bfloat16_box_class()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
