"""The PyTorch backend (experimental): Tensor leaves become ``torch.Tensor``.

Conversion semantics (the published torch backend page):

* :func:`as_tensor` with ``copy=False`` imports over DLPack: an observation
  that arrived through shared memory becomes a ``torch.Tensor`` over the
  shared-memory block itself, with no copy, and the block stays leased (never
  reused) until the torch tensor is garbage collected. Torch does not
  write-protect imported memory: do not write into such a tensor (the block is
  shared with the server's slab; rlmesh exports it read-only).
* ``copy=True`` returns an owned, writable copy: what a client decodes by
  default, as Gymnasium's observations are writable.
* :func:`from_tensor` detaches, moves to the CPU and copies into a fresh
  rlmesh tensor; 0-d tensors become Python scalars.
* bfloat16 crosses bit for bit; bool needs torch 2.2 and uint16/32/64 need
  2.3 for DLPack, so torch >= 2.3 is required (:func:`ensure_available`).

Torch is imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import Any

from .._bridge import TreeBridge
from ..errors import BackendUnavailable
from ..tensor import Tensor

__all__ = [
    "BRIDGE",
    "TORCH_FLOOR",
    "VIEW_BRIDGE",
    "TorchBridge",
    "as_tensor",
    "ensure_available",
    "from_tensor",
    "space_from_spec",
]

#: The oldest torch release supported (DLPack for uint16/32/64).
TORCH_FLOOR = (2, 3)

_torch: ModuleType | None = None


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        match = re.match(r"\d+", piece)
        parts.append(int(match.group()) if match else 0)
    return tuple(parts)


def _load() -> ModuleType:
    global _torch
    if _torch is None:
        try:
            torch = importlib.import_module("torch")
        except ImportError as exc:
            raise BackendUnavailable('the torch backend needs torch: pip install "rlmesh[torch]"') from exc
        version = getattr(torch, "__version__", "0")
        if _version_tuple(version) < TORCH_FLOOR:
            raise BackendUnavailable(
                f"the torch backend needs torch >= {'.'.join(map(str, TORCH_FLOOR))} (DLPack for bool and "
                f"uint16/32/64); torch {version} is installed"
            )
        _torch = torch
    return _torch


def ensure_available() -> None:
    """Raise if torch is missing or older than 2.3.

    Raises:
        BackendUnavailable: (an ImportError) torch is missing or too old; the
            message names the floor.
    """
    global _torch
    # Re-check every time: the version may have been swapped (tests do).
    _torch = None
    _load()


def _module() -> ModuleType:
    return _torch if _torch is not None else _load()


def as_tensor(tensor: Tensor | bool | int | float, *, copy: bool = False) -> Any:
    """Return a ``torch.Tensor`` for an rlmesh tensor.

    Args:
        tensor: an :class:`rlmesh.Tensor`, or a Python bool, int or float (a
            decoded Discrete leaf, say), which becomes a 0-d tensor.
        copy: False (the default) imports over DLPack without a copy: the
            torch tensor shares the rlmesh tensor's memory and keeps it, and
            any shared-memory lease on it, alive; do not write into it. True
            returns an owned, writable copy.

    Raises:
        TypeError: ``tensor`` is neither an :class:`rlmesh.Tensor` nor a
            Python scalar.
        BackendUnavailable: torch is missing or too old.
    """
    torch = _module()
    if not isinstance(tensor, Tensor):
        if isinstance(tensor, (bool, int, float)):
            return torch.tensor(tensor)
        raise TypeError(
            f"as_tensor() expects an rlmesh.Tensor or a Python scalar, got {type(tensor).__name__}"
        )
    view = torch.from_dlpack(tensor)
    return view.clone() if copy else view


def from_tensor(value: Any) -> Any:
    """Encode a ``torch.Tensor`` as an rlmesh value: detached, on the CPU, copied.

    Returns:
        A fresh :class:`rlmesh.Tensor`, or a Python scalar for a 0-d tensor.

    Raises:
        TypeError: ``value`` is not a ``torch.Tensor``.
        BufferError: the dtype has no rlmesh equivalent (complex, quantized).
    """
    torch = _module()
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"from_tensor() expects a torch.Tensor, got {type(value).__name__}")
    value = value.detach()
    if value.device.type != "cpu":
        value = value.cpu()
    if value.ndim == 0:
        return value.item()
    return Tensor.from_dlpack(value.contiguous())


class TorchBridge(TreeBridge):
    """Tensor leaves <-> torch tensors: owned copies (``copy=True``) or zero-copy views."""

    name = "torch"

    def __init__(self, *, copy: bool) -> None:
        self.copy = copy

    def decode_tensor(self, tensor: Tensor) -> Any:
        """A torch tensor for the rlmesh tensor (a copy or a view, as the bridge was built)."""
        return as_tensor(tensor, copy=self.copy)

    def encode_leaf(self, value: Any) -> Any:
        """Torch tensors (and NumPy values) as rlmesh tensors and primitives; other leaves unchanged.

        Raises:
            BufferError: a tensor dtype rlmesh does not carry.
        """
        torch = _module()
        if isinstance(value, torch.Tensor):
            return from_tensor(value)
        if type(value).__module__ == "numpy":
            # A torch policy may hand back NumPy values (tensor.numpy() does).
            from .numpy import BRIDGE as NUMPY

            return NUMPY.encode_leaf(value)
        return value

    def __repr__(self) -> str:
        return f"TorchBridge(copy={self.copy})"


#: Decodes to owned, writable copies (the clients' and models' default).
BRIDGE = TorchBridge(copy=True)
#: Decodes to zero-copy views over the tensors' memory (shared memory, leased).
VIEW_BRIDGE = TorchBridge(copy=False)


def space_from_spec(spec: Any) -> Any:
    """Create a torch-adapted space for a space spec: samples are ``torch.Tensor``.

    Raises:
        BackendUnavailable: torch is missing or too old.
    """
    from .. import spaces

    ensure_available()
    if isinstance(spec, spaces.Space):
        spec = spec.spec
    return spaces.space_from_spec(spec, bridge=BRIDGE)
