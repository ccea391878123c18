"""``rlmesh.jax``: the JAX backend (experimental).

The same clients and models as the rest of rlmesh, with tensor leaves decoded to
``jax.Array``. Install with ``pip install "rlmesh[jax]"``.

Conversion semantics:

* :func:`asarray` imports over DLPack: an observation that arrived through
  shared memory becomes a ``jax.Array`` over the shared-memory block itself,
  with no copy, and the block stays leased (never reused) until the array is
  garbage collected. JAX arrays are immutable.
* :func:`from_array` moves the array to the CPU, blocks until it is ready, and
  copies it into a fresh tensor; 0-d arrays become Python scalars.
* int64, uint64 and float64 need JAX's 64-bit mode
  (``jax.config.update("jax_enable_x64", True)``); without it JAX demotes them.
* bfloat16 crosses bit for bit.
* jax >= 0.4.24 is required; :func:`ensure_available` enforces it.

To put an observation on an accelerator, ``jax.device_put(obs, device)``.
"""

from __future__ import annotations

from typing import Any

from .backends.jax import BRIDGE, asarray, ensure_available, from_array, space_from_spec
from .client import RemoteEnv as _RemoteEnv, RemoteVectorEnv as _RemoteVectorEnv
from .models import ModelBase as _ModelBase
from .remote_model import RemoteModelBase as _RemoteModelBase
from .vector.sharded import ShardedVectorEnvBase as _ShardedVectorEnvBase

__all__ = [
    "JaxValue",
    "Model",
    "RemoteEnv",
    "RemoteModel",
    "RemoteVectorEnv",
    "ShardedVectorEnv",
    "asarray",
    "ensure_available",
    "from_array",
    "space_from_spec",
]

#: What a JAX client's values are: primitives, ``jax.Array`` and containers of them.
JaxValue = Any


class RemoteEnv(_RemoteEnv):
    """Experimental JAX-backed remote client for one environment.

    Tensor leaves decode to ``jax.Array`` (zero-copy over shared memory);
    Python primitives and nested containers are preserved. Actions may be
    JAX arrays, NumPy arrays or primitives.
    """

    _bridge = BRIDGE

    def _ensure_backend(self) -> None:
        ensure_available()


class RemoteVectorEnv(_RemoteVectorEnv):
    """Experimental JAX-backed remote client for vector environments."""

    _bridge = BRIDGE

    def _ensure_backend(self) -> None:
        ensure_available()


class ShardedVectorEnv(_ShardedVectorEnvBase):
    """Many vector endpoints stepped as one vector env; batches are JAX arrays.

    Infos hold NumPy arrays. See :class:`rlmesh.vector.sharded.ShardedVectorEnvBase`.
    """

    _backend = "jax"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        ensure_available()
        super().__init__(*args, **kwargs)


class Model(_ModelBase[Any, Any]):
    """Experimental JAX-backed model: the predict corners receive ``jax.Array`` observations.

    Batched corners get arrays whose leading axis is the lanes.
    See :class:`rlmesh.models.ModelBase`.
    """

    _bridge = BRIDGE
    _client_classes = (RemoteEnv, RemoteVectorEnv)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        ensure_available()
        super().__init__(*args, **kwargs)


class RemoteModel(_RemoteModelBase):
    """A served model (``Model.serve``) used wherever a Model goes, with JAX arrays (experimental).

    See :class:`rlmesh.remote_model.RemoteModelBase` for the constructor and lifetime.
    """

    _bridge = BRIDGE
    _client_classes = (RemoteEnv, RemoteVectorEnv)

    def _ensure_backend(self) -> None:
        ensure_available()


def __getattr__(name: str) -> Any:
    # SandboxEnv and SandboxVectorEnv live in layer 6 (rlmesh.sandbox): loaded on
    # first use, so `import rlmesh.jax` never loads the sandbox package.
    if name in ("SandboxEnv", "SandboxVectorEnv", "SandboxModel"):
        from importlib import import_module

        value = import_module("rlmesh.sandbox.backends").sandbox_class("jax", name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
