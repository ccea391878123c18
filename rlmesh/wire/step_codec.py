"""The fixed-shape step codec: when a session's steps travel as compact ring records.

On a shared-memory session of a single env whose action is a Discrete or one
fixed-shape tensor leaf, and whose observation is a Discrete or one tensor
leaf smaller than :data:`~rlmesh.specs.SHM_INLINE_LIMIT`, a STEP and its OK
can skip msgpack: the C extension writes and reads them in the ring's memory
(``rlmesh/_native_step.c`` documents the records). Both sides must say so in
the handshake (``"step_codec": true`` in HELLO, then in READY), so a peer of
an older release keeps the msgpack path. ``RLMESH_STEP_CODEC=0`` turns it off
on either side.

This module decides, from the contract, whether the codec applies and with
what sizes (:func:`step_layout`).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .._dtypes import DTYPES, DType
from ..spaces._walk import TENSOR_KINDS, leaf_nbytes
from ..specs import SHM_INLINE_LIMIT, EnvContract, SpaceSpec

__all__ = ["ENV_VAR", "StepLayout", "step_codec_enabled", "step_layout"]

#: The environment variable that turns the codec off ("0") in this process.
ENV_VAR = "RLMESH_STEP_CODEC"

# A Discrete travels as one little-endian int64.
_DISCRETE_BYTES = 8


class StepLayout(NamedTuple):
    """The sizes of a contract's compact records.

    ``*_dtype`` and ``*_shape`` describe a tensor leaf (None and ``()`` for a
    Discrete, which travels as an int64 and is read back as an int).
    """

    action_nbytes: int
    action_discrete: bool
    action_dtype: DType | None
    action_shape: tuple[int, ...]
    obs_nbytes: int
    obs_discrete: bool
    obs_dtype: DType | None
    obs_shape: tuple[int, ...]


def step_codec_enabled() -> bool:
    """Whether this process offers (or accepts) the codec: ``RLMESH_STEP_CODEC`` is not "0"."""
    return os.environ.get(ENV_VAR, "1").strip() != "0"


def _leaf(spec: SpaceSpec, limit: int | None) -> tuple[int, bool, DType | None, tuple[int, ...]] | None:
    if spec.kind == "discrete":
        return _DISCRETE_BYTES, True, None, ()
    if spec.kind in TENSOR_KINDS and spec.dtype is not None:
        nbytes = leaf_nbytes(spec)
        if nbytes is None or (limit is not None and nbytes >= limit):
            return None
        return nbytes, False, DTYPES[spec.dtype], tuple(spec.shape)
    return None


def step_layout(contract: EnvContract) -> StepLayout | None:
    """The compact records' layout for ``contract``, or None where steps keep msgpack.

    None for a vector endpoint, an action or observation that is a dict, a
    tuple or text, and an observation of :data:`~rlmesh.specs.SHM_INLINE_LIMIT`
    bytes or more (it travels as a zero-copy slab block).
    """
    if contract.num_envs != 1:
        return None
    action = _leaf(contract.action_space, None)
    obs = _leaf(contract.observation_space, SHM_INLINE_LIMIT)
    if action is None or obs is None:
        return None
    return StepLayout(*action, *obs)
