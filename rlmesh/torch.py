"""``rlmesh.torch``: the PyTorch backend (experimental).

The same clients and models as the rest of rlmesh, with tensor leaves decoded to
``torch.Tensor``. Install with ``pip install "rlmesh[torch]"`` (a CPU build of
torch first on a machine without a GPU; see the README).

Conversion semantics:

* Clients and models decode to owned, writable copies by default
  (``as_tensor(t, copy=True)``), as Gymnasium's observations are writable.
* ``RemoteEnv(..., copy=False)`` (and ``RemoteVectorEnv``) decode without a
  copy: an observation that arrived through shared memory is a torch tensor
  over the shared-memory block itself, leased (never reused by the server)
  until the tensor is garbage collected. Torch does not write-protect it: do
  not write into it. :func:`as_tensor` with ``copy=False`` does the same for
  any rlmesh tensor.
* :func:`from_tensor` detaches, moves to the CPU and copies; 0-d tensors become
  Python scalars. Actions may be torch tensors (on any device), NumPy arrays
  or primitives.
* torch >= 2.3 is required (DLPack for bool and uint16/32/64);
  :func:`ensure_available` enforces it.

To put an observation on a GPU, ``obs.to("cuda", non_blocking=True)``.
"""

from __future__ import annotations

from typing import Any

from .backends.torch import BRIDGE, VIEW_BRIDGE, as_tensor, ensure_available, from_tensor, space_from_spec
from .client import RemoteEnv as _RemoteEnv, RemoteVectorEnv as _RemoteVectorEnv
from .models import ModelBase as _ModelBase

__all__ = [
    "Model",
    "RemoteEnv",
    "RemoteVectorEnv",
    "TorchValue",
    "as_tensor",
    "ensure_available",
    "from_tensor",
    "space_from_spec",
]

#: What a torch client's values are: primitives, ``torch.Tensor`` and containers of them.
TorchValue = Any


class RemoteEnv(_RemoteEnv):
    """Experimental torch-backed remote client for one environment.

    Args:
        address: the endpoint; every other keyword as :class:`rlmesh.numpy.RemoteEnv`.
        copy: True (default): observations are owned, writable torch tensors.
            False: zero-copy torch tensors over the shared-memory block, leased
            until collected (over a socket without shared memory, over the
            received frame's copy); do not write into them.
    """

    _bridge = BRIDGE

    def __init__(self, address: str | None = None, *, copy: bool = True, **kwargs: Any) -> None:
        if not copy:
            self._bridge = VIEW_BRIDGE
        super().__init__(address, **kwargs)

    def _ensure_backend(self) -> None:
        ensure_available()


class RemoteVectorEnv(_RemoteVectorEnv):
    """Experimental torch-backed remote client for vector environments (``copy`` as :class:`RemoteEnv`)."""

    _bridge = BRIDGE

    def __init__(self, address: str | None = None, *, copy: bool = True, **kwargs: Any) -> None:
        if not copy:
            self._bridge = VIEW_BRIDGE
        super().__init__(address, **kwargs)

    def _ensure_backend(self) -> None:
        ensure_available()


class Model(_ModelBase[Any, Any]):
    """Experimental torch-backed model: the predict corners receive ``torch.Tensor`` observations (copies).

    Batched corners get tensors whose leading axis is the lanes.
    See :class:`rlmesh.models.ModelBase`.
    """

    _bridge = BRIDGE
    _client_classes = (RemoteEnv, RemoteVectorEnv)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        ensure_available()
        super().__init__(*args, **kwargs)
