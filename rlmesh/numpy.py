"""``rlmesh.numpy``: the NumPy backend.

The same clients, models and value helpers as the rest of rlmesh, with tensor
leaves decoded to NumPy arrays. Install with ``pip install "rlmesh[numpy]"``.

Conversion semantics:

* :func:`asarray` returns a writable copy (``obs /= 255.0`` works); the
  zero-copy read-only view is ``numpy.from_dlpack(tensor)``.
* :func:`from_array` always copies into a fresh tensor; scalars become
  Python primitives.
* bfloat16 needs ``ml_dtypes`` (``rlmesh[bfloat16]``).
"""

from __future__ import annotations

from typing import Any

from .backends.numpy import BRIDGE, asarray, ensure_available, from_array, space_from_spec
from .client import RemoteEnv as _RemoteEnv, RemoteVectorEnv as _RemoteVectorEnv
from .models import ModelBase as _ModelBase
from .remote_model import RemoteModelBase as _RemoteModelBase
from .vector.sharded import ShardedVectorEnvBase as _ShardedVectorEnvBase

__all__ = [
    "Model",
    "NumpyValue",
    "RemoteEnv",
    "RemoteModel",
    "RemoteVectorEnv",
    "ShardedVectorEnv",
    "asarray",
    "ensure_available",
    "from_array",
    "space_from_spec",
]

#: What a NumPy client's values are: primitives, arrays, and containers of them.
NumpyValue = Any


class RemoteEnv(_RemoteEnv):
    """NumPy-backed remote client for a single environment.

    Observations are writable NumPy arrays (copies); rewards and flags are
    Python scalars; actions may be NumPy arrays, NumPy scalars or primitives.

    Example:
        >>> from rlmesh.numpy import RemoteEnv                 # doctest: +SKIP
        >>> env = RemoteEnv("127.0.0.1:5555")                  # doctest: +SKIP
        >>> observation, info = env.reset(seed=42)             # doctest: +SKIP
        >>> observation, reward, terminated, truncated, info = env.step(0)  # doctest: +SKIP
        >>> env.close()                                        # doctest: +SKIP
    """

    _bridge = BRIDGE

    def _ensure_backend(self) -> None:
        ensure_available()


class RemoteVectorEnv(_RemoteVectorEnv):
    """NumPy-backed remote client for a vector environment.

    Batched observations, rewards, terminations and truncations are NumPy arrays.
    """

    _bridge = BRIDGE

    def _ensure_backend(self) -> None:
        ensure_available()


class ShardedVectorEnv(_ShardedVectorEnvBase):
    """Many vector endpoints stepped as one vector env; batches are NumPy arrays.

    See :class:`rlmesh.vector.sharded.ShardedVectorEnvBase` for the arguments,
    the lane layout, lost endpoints and send/recv.

    Example:
        >>> env = ShardedVectorEnv(["tcp://10.0.0.5:7001", "tcp://10.0.0.6:7001"])  # doctest: +SKIP
        >>> obs, info = env.reset(seed=0)                  # lane g gets seed 0 + g  # doctest: +SKIP
    """

    _backend = "numpy"


class Model(_ModelBase[Any, Any]):
    """A model whose predict corners receive NumPy observations (writable copies).

    Batched corners get arrays whose leading axis is the lanes.
    See :class:`rlmesh.models.ModelBase` for the corners, the constructor, the
    hooks and ``run``.

    Example:
        >>> from rlmesh.numpy import Model                            # doctest: +SKIP
        >>> Model(lambda observation: 0).run("127.0.0.1:5555", seeds=[0]).mean_reward  # doctest: +SKIP
    """

    _bridge = BRIDGE
    _client_classes = (RemoteEnv, RemoteVectorEnv)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        ensure_available()
        super().__init__(*args, **kwargs)


class RemoteModel(_RemoteModelBase):
    """A served model (``Model.serve``) used wherever a Model goes, with NumPy observations and actions.

    See :class:`rlmesh.remote_model.RemoteModelBase` for the constructor and lifetime.
    """

    _bridge = BRIDGE
    _client_classes = (RemoteEnv, RemoteVectorEnv)

    def _ensure_backend(self) -> None:
        ensure_available()


def __getattr__(name: str) -> Any:
    # SandboxEnv and SandboxVectorEnv live in layer 6 (rlmesh.sandbox): loaded on
    # first use, so `import rlmesh.numpy` never loads the sandbox package.
    if name in ("SandboxEnv", "SandboxVectorEnv", "SandboxModel"):
        from importlib import import_module

        value = import_module("rlmesh.sandbox.backends").sandbox_class("numpy", name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
