"""Per-lane info on the vector fast path: msgpack with numpy arrays kept typed, batched as Gymnasium does.

A worker encodes each lane's ``info`` dict with :func:`encode_info`: numpy
arrays and numpy scalars travel as msgpack extension records (dtype string,
shape, raw bytes; never pickle), so the client rebuilds them with their
dtype, and :func:`add_info` batches them exactly as
``gymnasium.vector.VectorEnv._add_info`` does (``info[k]`` an array of
``num_envs`` entries, ``info["_k"]`` its mask). Other values follow
rlmesh's metadata rules (:func:`rlmesh.values.encode_metadata`).

numpy is imported inside the functions: the module is imported by the
client at session start, and ``import rlmesh`` must not import numpy.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ..errors import DecodeError
from ..values import encode_metadata

__all__ = ["add_info", "decode_info", "encode_final", "encode_info"]

EXT_ARRAY = 1
EXT_SCALAR = 2

#: Dimensions of an info array, and the depth of an info tree, a peer may send.
MAX_RANK = 32
MAX_DEPTH = 32


def _default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.ndarray):
        if obj.dtype == object or obj.dtype.kind in "USV":
            return encode_metadata(obj.tolist())
        arr = np.ascontiguousarray(obj)
        head = msgpack.packb([arr.dtype.str, list(arr.shape)])
        return msgpack.ExtType(EXT_ARRAY, head + arr.tobytes())
    if isinstance(obj, np.generic) and obj.dtype.kind in "biufc":
        return msgpack.ExtType(EXT_SCALAR, msgpack.packb(obj.dtype.str) + obj.tobytes())
    return encode_metadata(obj)


def encode_info(info: dict[str, Any]) -> bytes:
    """Msgpack bytes of one lane's info (b"" for an empty one).

    Raises:
        TypeError: a value fits neither numpy nor the metadata rules.
    """
    if not info:
        return b""
    return bytes(msgpack.packb(info, default=_default, strict_types=True))


def _ext_hook(code: int, data: bytes) -> Any:
    import numpy as np

    try:
        unpacker = msgpack.Unpacker(max_buffer_size=len(data) or 1)
        unpacker.feed(data)
        head = unpacker.unpack()
        offset = unpacker.tell()
        if code == EXT_ARRAY:
            dtype_str, shape = head
            dtype = np.dtype(dtype_str)
            if (
                dtype.kind not in "biufc"
                or len(shape) > MAX_RANK
                or any(type(d) is not int or d < 0 for d in shape)
            ):
                raise ValueError("bad array record")
            count = 1
            for d in shape:
                count *= d
            raw = data[offset:]
            if len(raw) != count * dtype.itemsize:
                raise ValueError("array record length mismatch")
            return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        if code == EXT_SCALAR:
            dtype = np.dtype(head)
            raw = data[offset:]
            if dtype.kind not in "biufc" or len(raw) != dtype.itemsize:
                raise ValueError("bad scalar record")
            return np.frombuffer(raw, dtype=dtype)[0]
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"malformed info record ({exc})") from None
    raise DecodeError(f"unknown info record kind {code}")


def decode_info(data: bytes | memoryview) -> Any:
    """The value :func:`encode_info` encoded.

    Raises:
        DecodeError: malformed bytes.
    """
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, strict_map_key=True, raw=False)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"malformed lane info ({exc})") from None


def add_info(infos: dict[str, Any], info: dict[str, Any], lane: int, num_envs: int) -> dict[str, Any]:
    """Add lane ``lane``'s info to the batched ``infos``, as Gymnasium's ``VectorEnv._add_info``."""
    import numpy as np

    for key, value in info.items():
        if key == "final_obs":
            array = infos.get("final_obs")
            if array is None:
                array = np.full(num_envs, fill_value=None, dtype=object)
            array[lane] = value
        elif isinstance(value, dict):
            array = add_info(infos.get(key, {}), value, lane, num_envs)
        else:
            if key not in infos:
                if type(value) in (int, float, bool) or issubclass(type(value), np.number):
                    array = np.zeros(num_envs, dtype=type(value))
                elif isinstance(value, np.ndarray):
                    array = np.zeros((num_envs, *value.shape), dtype=value.dtype)
                else:
                    array = np.full(num_envs, fill_value=None, dtype=object)
            else:
                array = infos[key]
            array[lane] = value
        mask = infos.get(f"_{key}")
        if mask is None:
            mask = np.zeros(num_envs, dtype=np.bool_)
        mask[lane] = True
        infos[key], infos[f"_{key}"] = array, mask
    return infos


def encode_final(final_info: dict[str, Any], info: dict[str, Any]) -> bytes:
    """Msgpack bytes of a SameStep lane that ended: ``[final_info, reset_info]``.

    Raises:
        TypeError: a value fits neither numpy nor the metadata rules.
    """
    return bytes(msgpack.packb([final_info or {}, info or {}], default=_default, strict_types=True))
