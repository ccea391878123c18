"""The adapter's codecs: sinks, observation encoders and action decoders.

Compiled once per contract from the spaces: the *observation encoder* (env
values -> wire values, writing tensor data straight into a :class:`Sink`: a
shared-memory slot or a frame tail) and the *action decoder* (wire values ->
what the env expects, validated against the action space: a structurally wrong
action is an :class:`InvalidActionError`). Numpy is used when it is installed.
Split from ``rlmesh._adapter``, which re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from . import spaces as S
from ._conformance import Conformance
from ._dtypes import DTYPES, DType, integer_bounds, is_float, is_integer
from .errors import InvalidActionError, SpecError
from .spaces._walk import TENSOR_KINDS, Path, fold, leaf_nbytes, location
from .specs import SHM_INLINE_LIMIT
from .tensor import Tensor
from .wire.codec import CODE_BY_NAME, handle_record, inline_ext

_np: Any = None


def _numpy() -> Any:
    global _np
    if _np is None:
        try:
            import numpy
        except ImportError:  # pragma: no cover - exercised in a subprocess test
            _np = False
        else:
            _np = numpy
    return _np or None


def _np_dtype(name: str) -> Any:
    from .backends.numpy import numpy_dtype

    return numpy_dtype(name)


# -- sinks --------------------------------------------------------------------------


class Sink:
    """Where the observation encoder puts tensor data.

    ``target(shape, dtype)`` returns the wire record for a tensor and a
    writable byte view to fill with its data (little-endian, C order).
    """

    def target(self, shape: tuple[int, ...], dtype: DType) -> tuple[Any, memoryview]:
        """Reserve room for one tensor."""
        raise NotImplementedError

    def put(self, data: Any, shape: tuple[int, ...], dtype: DType) -> Any:
        """Store a C-contiguous little-endian buffer of the right size; return its record.

        The default copies into :meth:`target`; the inline sink sends ``data``
        itself, without a copy (it must not change before the frame is sent).
        """
        record, view = self.target(shape, dtype)
        if view.nbytes:
            view[:] = data
        return record


class InlineSink(Sink):
    """Tensor data goes into the frame tail."""

    def __init__(self, tail: Any) -> None:
        self.tail = tail

    def target(self, shape: tuple[int, ...], dtype: DType) -> tuple[Any, memoryview]:  # noqa: D102
        nbytes = math.prod(shape) * dtype.itemsize
        tensor, view = Tensor._empty(shape, dtype)
        offset = self.tail.add(view, nbytes)
        return inline_ext(CODE_BY_NAME[dtype.name], shape, offset), view

    def put(self, data: Any, shape: tuple[int, ...], dtype: DType) -> Any:  # noqa: D102
        offset = self.tail.add(data, math.prod(shape) * dtype.itemsize)
        return inline_ext(CODE_BY_NAME[dtype.name], shape, offset)


class ShmSink(Sink):
    """Tensor data goes into leased slab blocks (see server's DataPlane), small tensors inline.

    A tensor smaller than :data:`~rlmesh.specs.SHM_INLINE_LIMIT` bytes goes
    into :attr:`tail` (the ring record's tail) when the session set one for
    the response being built: no block, no lease, no release.
    """

    def __init__(self, acquire: Callable[[int], Any], tail: Any = None) -> None:
        self._acquire = acquire
        #: The response's tail for small tensors (None: every tensor in a block).
        self.tail = tail

    def target(self, shape: tuple[int, ...], dtype: DType) -> tuple[Any, memoryview]:  # noqa: D102
        nbytes = math.prod(shape) * dtype.itemsize
        tail = self.tail
        if tail is not None and nbytes < SHM_INLINE_LIMIT:
            tensor, view = Tensor._empty(shape, dtype)
            return inline_ext(CODE_BY_NAME[dtype.name], shape, tail.add(view, nbytes)), view
        block = self._acquire(nbytes)
        block.nbytes = nbytes
        record = handle_record(CODE_BY_NAME[dtype.name], shape, block.segment, block.generation, block.offset)
        return record, block.view[:nbytes]

    def put(self, data: Any, shape: tuple[int, ...], dtype: DType) -> Any:  # noqa: D102
        nbytes = math.prod(shape) * dtype.itemsize
        tail = self.tail
        if tail is not None and nbytes < SHM_INLINE_LIMIT:
            # By reference: the data stays unchanged until the response is sent (as InlineSink's).
            return inline_ext(CODE_BY_NAME[dtype.name], shape, tail.add(data, nbytes))
        block = self._acquire(nbytes)
        block.nbytes = nbytes
        if nbytes:
            if nbytes == block.capacity:
                block.view[:] = data
            else:
                block.view[:nbytes] = data
        return handle_record(CODE_BY_NAME[dtype.name], shape, block.segment, block.generation, block.offset)


class CompactSink(Sink):
    """The one tensor leaf of a compact step OK (:mod:`rlmesh.wire.step_codec`), kept by reference.

    No wire record is built: the encoder's return value is :data:`COMPACT_LEAF`,
    and :attr:`data` holds the leaf's bytes (unchanged until the answer is
    sent, as :class:`InlineSink`'s). The handler sends them in a compact OK, or
    builds the inline record when the answer must be msgpack after all.
    """

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: Any = b""

    def target(self, shape: tuple[int, ...], dtype: DType) -> tuple[Any, memoryview]:  # noqa: D102
        view = Tensor._empty(shape, dtype)[1]
        self.data = view
        return COMPACT_LEAF, view

    def put(self, data: Any, shape: tuple[int, ...], dtype: DType) -> Any:  # noqa: D102
        self.data = data
        return COMPACT_LEAF


#: What the observation encoder returns for a leaf that went into a :class:`CompactSink`.
COMPACT_LEAF = object()


# -- observation encoders -------------------------------------------------------------


def _obs_error(where: str, message: str) -> SpecError:
    return SpecError(f"the env produced an invalid observation{' at ' + where if where else ''}: {message}")


def _check_cast(arr: Any, dtype: DType, np: Any, where: str, error: Callable[[str, str], Exception]) -> None:
    """Reject casts that would change values: fractions or NaN into integers, out of range."""
    kind = arr.dtype.kind
    if is_integer(dtype) or dtype.name == "bool":
        if kind not in "iufb":
            raise error(where, f"cannot use {arr.dtype} values for a {dtype.name} space")
        if not arr.size:
            return
        if kind == "f":
            if not bool(np.all(np.isfinite(arr))):
                raise error(where, f"NaN or infinite values for a {dtype.name} space")
            if not bool(np.all(arr == np.trunc(arr))):
                raise error(where, f"{arr.dtype} values are not all integral for a {dtype.name} space")
        lo, hi = integer_bounds(dtype)
        if int(arr.min()) < lo or int(arr.max()) > hi:
            raise error(where, f"values outside the {dtype.name} range")
    elif is_float(dtype) and kind not in "iufb" and arr.dtype.name != "bfloat16":
        raise error(where, f"cannot use {arr.dtype} values for a {dtype.name} space")


def _tensor_encoder(
    spec: S.SpaceSpec, batch: int | None, where: str, check: Callable[[Any], None] | None = None
) -> Callable[[Any, Sink], Any]:
    """The encoder of one tensor leaf; ``check`` sees its values in the wire dtype.

    ``check`` gets a numpy array (a Tensor where numpy is missing) and runs
    before the data is stored, or after the cast when the env's dtype differs
    from the space's (the client sees the cast values).
    """
    assert spec.dtype is not None
    dtype = DTYPES[spec.dtype]
    # Exact tuples: per-step comparisons with numpy's shapes stay in C.
    shape = tuple(spec.shape) if batch is None else (batch, *spec.shape)
    np = _numpy()
    np_dtype = _np_dtype(dtype.name) if np is not None else None
    # The size the session's slab rings were made for (see rlmesh.specs.step_tensor_sizes).
    nbytes = leaf_nbytes(spec, batch)

    def encode(value: Any, sink: Sink) -> Any:
        if isinstance(value, Tensor):
            if value._shape != shape:
                raise _obs_error(where, f"shape {value.shape}, the space has {shape}")
            if value.dtype != dtype.name:
                if np is None:
                    raise _obs_error(where, f"dtype {value.dtype}, the space has {dtype.name}")
                value = (
                    np.from_dlpack(value)
                    if value.dtype != "bfloat16"
                    else np.frombuffer(value.buffer, np_dtype).reshape(value._shape)
                )
            else:
                if check is not None:
                    check(np.frombuffer(value._view, np_dtype) if np is not None else value)
                return sink.put(value._view, shape, dtype)
        if np is None:
            raise _obs_error(
                where, f"expected an rlmesh.Tensor, got {type(value).__name__} (numpy is not installed)"
            )
        arr = value if type(value) is np.ndarray else np.asarray(value)
        if arr.shape != shape:
            raise _obs_error(where, f"shape {arr.shape}, the space has {shape}")
        if arr.dtype == np_dtype and arr.flags.c_contiguous:
            if check is not None:
                check(arr)
            # Already what the wire carries: the sink takes the bytes as they are.
            return sink.put(arr.reshape(-1).view(np.uint8), shape, dtype)
        _check_cast(arr, dtype, np, where, _obs_error)
        record, view = sink.target(shape, dtype)
        if nbytes:
            np.copyto(np.frombuffer(view, np_dtype).reshape(shape), arr, casting="unsafe")
            if check is not None:
                check(np.frombuffer(view, np_dtype))
        return record

    return encode


def _int_value(value: Any, where: str, error: Callable[[str, str], Exception]) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise error(where, f"{value!r} is not an integer")
        return int(value)
    if isinstance(value, Tensor) and value.size == 1:
        return _int_value(value.item(), where, error)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "size", 1) == 1:
        return _int_value(item(), where, error)
    raise error(where, f"expected an integer, got {type(value).__name__}")


def compile_encoder(
    spec: S.SpaceSpec, batch: int | None = None, path: Path = (), conformance: Conformance | None = None
) -> Callable[[Any, Sink], Any]:
    """Compile the observation encoder of a space (``batch``: a vector env's N).

    With ``conformance``, the encoder also checks the values against the
    space (see :mod:`rlmesh._conformance`); without, it checks only what the
    wire needs (structure, shape, lossless dtype casts). ``path`` is where
    ``spec`` sits in the observation, for error messages and warnings.
    """
    return fold(
        spec,
        lambda leaf, leaf_path: _leaf_encoder(leaf, batch, leaf_path, conformance),
        _dict_encoder,
        _tuple_encoder,
        path,
    )


def _leaf_encoder(
    spec: S.SpaceSpec, batch: int | None, path: Path, conformance: Conformance | None
) -> Callable[[Any, Sink], Any]:
    kind = spec.kind
    where = location(path)
    if kind in TENSOR_KINDS:
        check = conformance.tensor_check(spec, batch, path) if conformance is not None else None
        return _tensor_encoder(spec, batch, where, check)
    if kind == "discrete":
        if batch is None:
            if conformance is None:
                return lambda value, sink: _int_value(value, where, _obs_error)
            check_int = conformance.discrete_check(spec, path)

            def encode_discrete(value: Any, sink: Sink) -> int:
                number = _int_value(value, where, _obs_error)
                check_int(number)
                return number

            return encode_discrete
        as_box = S.Box(-(1 << 62), 1 << 62, (), "int64").spec
        check = conformance.tensor_check(spec, batch, path) if conformance is not None else None
        return _tensor_encoder(as_box, batch, where, check)
    if kind == "text":
        check_text = conformance.text_check(spec, batch, path) if conformance is not None else None
        if batch is None:
            if check_text is None:
                return lambda value, sink: str(value)

            def encode_text(value: Any, sink: Sink) -> str:
                text = str(value)
                check_text(text)
                return text

            return encode_text
        if check_text is None:
            return lambda value, sink: [str(v) for v in value]

        def encode_texts(value: Any, sink: Sink) -> list[str]:
            texts = [str(v) for v in value]
            check_text(texts)
            return texts

        return encode_texts
    raise SpecError(f"unsupported space kind {kind!r}")  # pragma: no cover


def _dict_encoder(
    spec: S.SpaceSpec, path: Path, children: list[tuple[str, Callable[[Any, Sink], Any]]]
) -> Callable[[Any, Sink], Any]:
    where = location(path)

    def encode_dict(value: Any, sink: Sink) -> Any:
        try:
            return {key: enc(value[key], sink) for key, enc in children}
        except (KeyError, TypeError) as exc:
            raise _obs_error(where, f"expected a dict with keys {[k for k, _ in children]}: {exc}") from None

    return encode_dict


def _tuple_encoder(
    spec: S.SpaceSpec, path: Path, parts: list[Callable[[Any, Sink], Any]]
) -> Callable[[Any, Sink], Any]:
    where = location(path)

    def encode_tuple(value: Any, sink: Sink) -> Any:
        if len(value) != len(parts):
            raise _obs_error(where, f"expected {len(parts)} entries, got {len(value)}")
        return [enc(v, sink) for enc, v in zip(parts, value, strict=True)]

    return encode_tuple


# -- action decoders ----------------------------------------------------------------


def _action_error(where: str, message: str) -> InvalidActionError:
    return InvalidActionError(f"invalid action{' at ' + where if where else ''}: {message}")


def _tensor_decoder(spec: S.SpaceSpec, batch: int | None, where: str) -> Callable[[Any], Any]:
    assert spec.dtype is not None
    dtype = DTYPES[spec.dtype]
    # Exact tuples: per-step comparisons with numpy's shapes stay in C.
    lane_shape = tuple(spec.shape)
    shape = lane_shape if batch is None else (batch, *lane_shape)
    np = _numpy()
    kind = spec.kind
    details = spec.details
    if np is None:

        def decode_plain(value: Any) -> Any:
            if not isinstance(value, Tensor) or value._shape != shape or value.dtype != dtype.name:
                raise _action_error(where, f"expected a {dtype.name} tensor of shape {shape}")
            return value

        return decode_plain
    np_dtype = _np_dtype(dtype.name)
    if kind == "multi_discrete":
        nvec = np.asarray(details["nvec"], dtype=np.int64).reshape(spec.shape)
        start = np.asarray(details["start"], dtype=np.int64).reshape(spec.shape)

    def decode(value: Any) -> Any:
        if isinstance(value, Tensor):
            if value.dtype == "bfloat16":
                arr = np.frombuffer(value._view, _np_dtype("bfloat16")).reshape(value._shape)
            else:
                arr = np.from_dlpack(value)
        else:
            try:
                arr = np.asarray(value)
            except Exception as exc:
                raise _action_error(where, f"cannot read {type(value).__name__} as an array: {exc}") from None
        if arr.shape != shape:
            if batch is not None and arr.ndim >= 1 and arr.shape[1:] == lane_shape:
                raise _action_error(where, f"expected {batch} batched values, got {arr.shape[0]}")
            raise _action_error(where, f"shape {arr.shape}, the action space has {shape}")
        if arr.dtype.kind == "f" and arr.size and bool(np.any(np.isnan(arr))):
            raise _action_error(where, "NaN values")
        if arr.dtype != np_dtype:
            _check_cast(arr, dtype, np, where, _action_error)
        out = np.array(arr, dtype=np_dtype, copy=True)
        if kind == "multi_discrete" and out.size:
            rel = out.astype(np.int64) - start
            if bool(np.any(rel < 0)) or bool(np.any(rel >= nvec)):
                raise _action_error(where, f"values outside the MultiDiscrete range (nvec {nvec.tolist()})")
        elif kind == "multi_binary" and out.size and not bool(np.all((out == 0) | (out == 1))):
            raise _action_error(where, "MultiBinary values must be 0 or 1")
        return out

    return decode


def compile_decoder(spec: S.SpaceSpec, batch: int | None = None, path: Path = ()) -> Callable[[Any], Any]:
    """Compile the action decoder of a space (``batch``: a vector env's N).

    ``path`` is where ``spec`` sits in the action, for error messages.
    """
    return fold(
        spec,
        lambda leaf, leaf_path: _leaf_decoder(leaf, batch, location(leaf_path)),
        _dict_decoder,
        _tuple_decoder,
        path,
    )


def _leaf_decoder(spec: S.SpaceSpec, batch: int | None, where: str) -> Callable[[Any], Any]:
    kind = spec.kind
    if kind in TENSOR_KINDS:
        return _tensor_decoder(spec, batch, where)
    if kind == "discrete":
        n, start = spec.details["n"], spec.details["start"]
        if batch is None:

            def decode_discrete(value: Any) -> int:
                # A plain int (every compact STEP's) needs no conversion.
                action = value if type(value) is int else _int_value(value, where, _action_error)
                if not start <= action < start + n:
                    raise _action_error(where, f"{action} is outside Discrete({n}, start={start})")
                return action

            return decode_discrete
        as_box = _tensor_decoder(S.Box(start, start + n - 1, (), "int64").spec, batch, where)
        np = _numpy()

        def decode_discrete_batch(value: Any) -> Any:
            out = as_box(value)
            if np is not None and out.size and (bool(np.any(out < start)) or bool(np.any(out >= start + n))):
                raise _action_error(where, f"values outside Discrete({n}, start={start})")
            return out

        return decode_discrete_batch
    if kind == "text":
        lo, hi, charset = spec.details["min_length"], spec.details["max_length"], spec.details["charset"]
        allowed = set(charset) if charset else None

        def check_text(value: Any) -> str:
            if not isinstance(value, str):
                raise _action_error(where, f"expected a str, got {type(value).__name__}")
            if not lo <= len(value) <= hi:
                raise _action_error(where, f"text length {len(value)} is outside [{lo}, {hi}]")
            if allowed is not None and not set(value) <= allowed:
                raise _action_error(where, "text uses characters outside the charset")
            return value

        if batch is None:
            return check_text

        def decode_text_batch(value: Any) -> list[str]:
            if not isinstance(value, (list, tuple)) or len(value) != batch:
                raise _action_error(where, f"expected {batch} batched values")
            return [check_text(v) for v in value]

        return decode_text_batch
    raise SpecError(f"unsupported space kind {kind!r}")  # pragma: no cover


def _dict_decoder(
    spec: S.SpaceSpec, path: Path, children: list[tuple[str, Callable[[Any], Any]]]
) -> Callable[[Any], Any]:
    where = location(path)
    keys = [k for k, _ in children]

    def decode_dict(value: Any) -> Any:
        if not isinstance(value, dict) or sorted(value) != sorted(keys):
            got = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise _action_error(where, f"expected a dict with keys {keys}, got {got}")
        return {key: dec(value[key]) for key, dec in children}

    return decode_dict


def _tuple_decoder(spec: S.SpaceSpec, path: Path, parts: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    where = location(path)

    def decode_tuple(value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != len(parts):
            raise _action_error(where, f"expected a tuple of {len(parts)} entries")
        return tuple(dec(v) for dec, v in zip(parts, value, strict=True))

    return decode_tuple
