"""``EnvServer(framework=..., device=...)``: hand a served env its actions as framework arrays.

The wire is framework-neutral. By default a served env gets its actions as
NumPy arrays (or Python ints and strs), which suits NumPy and Gymnasium envs
and any env that converts for itself. A JAX-native env (gymnax, brax style,
whose ``step`` does ``jnp`` arithmetic and may insist on ``jax.Array``) is
served with ``framework="jax"``: every array leaf of a decoded action becomes
a ``jax.Array`` on ``device`` before ``env.step`` sees it. Python ints (a
Discrete action) and strs (Text) stay as they are, as on the client side.

Observations need no declaration either way: ``jax.Array`` leaves (on any
device) are read through their ``__array__`` export, as NumPy arrays are.

A torch-native env is served with ``framework="torch"``: array leaves become
``torch.Tensor`` on ``device`` (a ``torch.device`` or a name such as "cpu",
"cuda:0"; default the CPU). Its observations may be CPU torch tensors (read
through their ``__array__`` export).

JAX is imported only when ``framework="jax"`` is asked for, torch only for
``framework="torch"`` (torch >= 2.3, the extra ``rlmesh[torch]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["FRAMEWORKS", "action_converter"]

#: The values ``framework=`` accepts (None means "numpy").
FRAMEWORKS = ("numpy", "jax", "torch")


def action_converter(framework: str | None, device: Any = None) -> Callable[[Any], Any] | None:
    """Check ``framework`` and ``device``; return the action converter for ``framework``.

    Args:
        framework: None or "numpy" (actions stay NumPy arrays), "jax", or "torch".
        device: where a JAX env wants its actions: a ``jax.Device``, or a
            platform name with an optional index ("cpu", "cpu:0", "gpu:1",
            "cuda:0", "tpu"); None: JAX's default device. For torch, a
            ``torch.device`` or its name ("cpu", "cuda:1"); None: the CPU.
            Needs a framework with devices.

    Returns:
        None when actions need no conversion, else a function mapping a
        decoded action to the framework's form.

    Raises:
        ValueError: an unknown framework; ``device`` without ``framework="jax"``
            or "torch"; a device that JAX (or torch) does not have.
        TypeError: ``framework`` is not a str, or ``device`` is neither a str
            nor a ``jax.Device``.
        BackendUnavailable: (an ImportError) jax or torch, whichever was
            asked for, is missing or too old.
    """
    if framework is not None and not isinstance(framework, str):
        raise TypeError(f"framework must be a str or None, got {type(framework).__name__}")
    name = (framework or "numpy").lower()
    if name not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)} or None")
    if device is not None and name not in ("jax", "torch"):
        raise ValueError(
            "device=... needs a framework with devices (framework='jax' or 'torch'); "
            "NumPy envs and the default have no device"
        )
    if name == "numpy":
        return None
    if name == "torch":
        return _torch_converter(device)
    return _jax_converter(device)


def _torch_converter(device: Any) -> Callable[[Any], Any]:
    from .backends.torch import ensure_available

    ensure_available()
    import numpy as np
    import torch

    target = _torch_device(torch, device)
    ndarray = np.ndarray
    from_numpy = torch.from_numpy

    def convert(value: Any) -> Any:
        kind = type(value)
        if kind is ndarray:
            # The decoded action is this call's own array: from_numpy shares it, .to copies when needed.
            return from_numpy(value).to(target)
        if kind is dict:
            return {k: convert(v) for k, v in value.items()}
        if kind is tuple:
            return tuple(convert(v) for v in value)
        if kind is list:
            return [convert(v) for v in value]
        return value

    return convert


def _torch_device(torch: Any, device: Any) -> Any:
    """A ``torch.device`` for ``device`` (None: the CPU)."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        target = device
    elif isinstance(device, str):
        try:
            target = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"invalid torch device {device!r}: {exc}") from None
    else:
        raise TypeError(f"device must be a str or a torch.device, got {type(device).__name__}")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} is not available: torch sees no CUDA device")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: torch has {torch.cuda.device_count()} CUDA device(s)")
    return target


def _jax_converter(device: Any) -> Callable[[Any], Any]:
    from .backends.jax import ensure_available

    ensure_available()
    import jax
    import numpy as np

    target = _jax_device(jax, device)
    put = jax.device_put
    ndarray = np.ndarray

    def convert(value: Any) -> Any:
        kind = type(value)
        if kind is ndarray:
            return put(value, target)
        if kind is dict:
            return {k: convert(v) for k, v in value.items()}
        if kind is tuple:
            return tuple(convert(v) for v in value)
        if kind is list:
            return [convert(v) for v in value]
        return value

    return convert


def _jax_device(jax: Any, device: Any) -> Any:
    """A ``jax.Device`` for ``device`` (None stays None: JAX's default device)."""
    if device is None or isinstance(device, jax.Device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a str or a jax.Device, got {type(device).__name__}")
    platform, _, index_text = device.partition(":")
    try:
        index = int(index_text) if index_text else 0
    except ValueError:
        raise ValueError(f"invalid device {device!r}; expected a platform and an index, as 'gpu:0'") from None
    platforms = [platform] + (["gpu"] if platform == "cuda" else [])
    errors = []
    for name in platforms:
        try:
            devices = jax.devices(name)
        except RuntimeError as exc:  # JAX's answer for a platform it has no backend for
            errors.append(str(exc))
            continue
        if not 0 <= index < len(devices):
            raise ValueError(f"device {device!r}: JAX has {len(devices)} {name} device(s)")
        return devices[index]
    raise ValueError(f"device {device!r} is not available to JAX: {'; '.join(errors)}")
