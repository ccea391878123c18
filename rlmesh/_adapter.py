"""The server's view of a user env: normalised calls, a contract, and codecs.

:class:`EnvAdapter` wraps whatever the user serves (a Gymnasium 1.x env, a
legacy gym env returning 4-tuples, a duck-typed env using rlmesh spaces, or a
vector env) behind one interface:

* ``reset(seed, options) -> (obs, info)``;
* ``step(action) -> (obs, reward, terminated, truncated, info)`` where a
  vector env's rewards and flags are float64/bool arrays of length N;
* ``render(env_index)``.

It also compiles, once per contract, the space-directed *observation
encoder* (env values -> wire values, writing tensor data straight into the
sink: a shared-memory slot or a frame tail) and the *action decoder* (wire
values -> what the env expects, validated against the action space: a
structurally wrong action is an :class:`InvalidActionError`, and the session
stays usable).

Numpy is used when it is installed (Gymnasium envs need it anyway); an env
that produces rlmesh Tensors and Python values works without it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from . import spaces as S
from ._conformance import Conformance, check_policy
from ._dtypes import DTYPES, DType, integer_bounds, is_float, is_integer
from .errors import InvalidActionError, SpecError
from .spaces._walk import TENSOR_KINDS, Path, fold, leaf_nbytes, location
from .specs import EnvContract
from .tensor import Tensor
from .values import sanitize_metadata
from .wire.codec import CODE_BY_NAME, handle_record, inline_ext

__all__ = ["EnvAdapter", "Sink", "is_vector_env", "to_spec"]

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


def to_spec(space: Any) -> S.SpaceSpec:
    """The SpaceSpec of an rlmesh space, a Gymnasium space, a spec or its dict.

    Raises:
        TypeError: the space kind is not supported (Graph, Sequence, OneOf...).
    """
    if isinstance(space, S.SpaceSpec):
        return space
    if isinstance(space, S.Space):
        return space.spec
    if isinstance(space, dict):
        return S.SpaceSpec.from_dict(space)
    return S.from_gymnasium_space(space).spec


def is_vector_env(env: Any) -> bool:
    """True if ``env`` looks like a vector env (Gymnasium's VectorEnv or alike)."""
    return any(hasattr(env, name) for name in ("num_envs", "single_observation_space", "single_action_space"))


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
    """Tensor data goes into leased slab blocks (see server's DataPlane)."""

    def __init__(self, acquire: Callable[[int], Any]) -> None:
        self._acquire = acquire

    def target(self, shape: tuple[int, ...], dtype: DType) -> tuple[Any, memoryview]:  # noqa: D102
        nbytes = math.prod(shape) * dtype.itemsize
        block = self._acquire(nbytes)
        block.nbytes = nbytes
        record = handle_record(CODE_BY_NAME[dtype.name], shape, block.segment, block.generation, block.offset)
        return record, block.view[:nbytes]

    def put(self, data: Any, shape: tuple[int, ...], dtype: DType) -> Any:  # noqa: D102
        nbytes = math.prod(shape) * dtype.itemsize
        block = self._acquire(nbytes)
        block.nbytes = nbytes
        if nbytes:
            if nbytes == block.capacity:
                block.view[:] = data
            else:
                block.view[:nbytes] = data
        return handle_record(CODE_BY_NAME[dtype.name], shape, block.segment, block.generation, block.offset)


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
                action = _int_value(value, where, _action_error)
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


# -- the adapter ----------------------------------------------------------------------


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _scalar_reward(reward: Any) -> float:
    """A single env's reward as a float; a one-element array (shape ``(1,)``) counts as a scalar.

    Raises:
        ValueError: the reward holds several numbers, or none.
    """
    try:
        return float(reward)
    except TypeError:
        # NumPy 2 refuses float() of a 1-d array even with one element.
        if getattr(reward, "size", None) == 1 and hasattr(reward, "item"):
            return float(reward.item())
        shape = getattr(reward, "shape", None)
        what = f"shape {shape}" if shape is not None else f"type {type(reward).__name__}"
        message = f"env.step() returned a reward of {what}; a single env's reward must be one number"
        raise ValueError(message) from None


def _lane_flags(info: Any, key: str, n: int) -> list[bool]:
    """One bool per lane for ``info[key]`` of a vector env's info dict.

    The value may be one flag for every lane or a sequence of N flags; a
    gymnasium-style mask ``info["_" + key]`` limits it to the lanes it marks.

    Raises:
        ValueError: a sequence whose length is not N.
    """
    if not isinstance(info, dict) or key not in info:
        return [False] * n
    value = info[key]
    if getattr(value, "ndim", None) == 0 or not hasattr(value, "__len__") or isinstance(value, str):
        flags = [bool(value)] * n
    else:
        if len(value) != n:
            raise ValueError(f"info[{key!r}] has {len(value)} entries for {n} lanes")
        flags = [bool(v) for v in value]
    mask = info.get("_" + key)
    if mask is not None and hasattr(mask, "__len__") and len(mask) == n:
        flags = [f and bool(m) for f, m in zip(flags, mask, strict=True)]
    return flags


def _autoreset_mode(metadata: dict[str, Any], vector: bool) -> str:
    if not vector:
        return "Disabled"
    if "autoreset_mode" not in metadata:
        return "Disabled"
    raw = metadata["autoreset_mode"]
    value = getattr(raw, "value", raw)
    if not isinstance(value, str):
        raise ValueError(f"metadata['autoreset_mode'] must be a string or AutoresetMode, got {raw!r}")
    for mode in ("NextStep", "SameStep", "Disabled"):
        if value.replace("_", "").lower() == mode.lower():
            return mode
    raise ValueError(f"unknown autoreset mode {value!r}; expected NextStep, SameStep or Disabled")


class EnvAdapter:
    """A served env behind one normalised interface.

    Args:
        env: the env object.
        validation: the observation value checks: "warn", "strict" or "off"
            (see :mod:`rlmesh._conformance`).
        to_framework: converts each decoded action before ``env.step`` (the
            server's ``framework=``; see :mod:`rlmesh._framework`).

    Raises:
        TypeError: ``env`` lacks ``reset``, ``step`` or ``close``, or a space
            is not supported.
        ValueError: a vector-shaped env with ``num_envs < 2``, an unknown
            autoreset mode, or an unknown validation policy.
    """

    def __init__(
        self,
        env: Any,
        *,
        validation: str = "warn",
        to_framework: Callable[[Any], Any] | None = None,
    ) -> None:
        check_policy(validation)
        for name in ("reset", "step", "close"):
            if not callable(getattr(env, name, None)):
                raise TypeError(
                    f"the env must have reset(), step() and close(); {type(env).__name__} lacks {name}()"
                )
        self.env = env
        self.vector = is_vector_env(env)
        if self.vector:
            num_envs = int(getattr(env, "num_envs", 0))
            if num_envs < 2:
                raise ValueError(f"a vector env served by rlmesh needs num_envs >= 2, got {num_envs}")
            obs_space = getattr(env, "single_observation_space", None) or env.observation_space
            act_space = getattr(env, "single_action_space", None) or env.action_space
        else:
            num_envs = 1
            obs_space, act_space = env.observation_space, env.action_space
        self.num_envs = num_envs
        spec_obj = getattr(env, "spec", None)
        env_id = getattr(spec_obj, "id", None)
        raw_metadata = dict(getattr(env, "metadata", None) or {})
        autoreset = _autoreset_mode(raw_metadata, self.vector)
        metadata = sanitize_metadata(raw_metadata)
        if self.vector:
            metadata["autoreset_mode"] = autoreset
        render_mode = getattr(env, "render_mode", None)
        self.contract = EnvContract(
            id=env_id if isinstance(env_id, str) and env_id else "UnknownEnv-v1",
            render_mode=render_mode if isinstance(render_mode, str) else None,
            num_envs=num_envs,
            metadata=metadata,
            autoreset_mode=autoreset,
            observation_space=to_spec(obs_space),
            action_space=to_spec(act_space),
        )
        batch = num_envs if self.vector else None
        #: The value checks' per-session state; None when the policy is "off".
        self.conformance = Conformance(validation) if validation != "off" else None
        self.encode_obs = compile_encoder(
            self.contract.observation_space, batch, conformance=self.conformance
        )
        self._to_framework = to_framework
        self.decode_action = compile_decoder(self.contract.action_space, batch)
        self._reset_takes_seed = _accepts(env.reset, "seed")
        self._reset_takes_options = _accepts(env.reset, "options")
        obs_spec = self.contract.observation_space
        self._tuple2_obs = obs_spec.kind == "tuple" and len(obs_spec.details["spaces"]) == 2

    # -- calls ---------------------------------------------------------------------

    def begin_session(self) -> None:
        """A new client takes this env: conformance warnings may be given once more."""
        if self.conformance is not None:
            self.conformance.begin_session()

    def encode_obs_info(self, obs: Any, info: dict[str, Any], sink: Sink) -> tuple[Any, dict[str, Any]]:
        """Encode an observation into ``sink``; return it with ``info`` plus any conformance warnings.

        Raises:
            SpecError: the observation does not fit the space, holds NaN, or
                deviates from it under the strict policy.
        """
        conformance = self.conformance
        try:
            wire = self.encode_obs(obs, sink)
        except BaseException:
            if conformance is not None:
                conformance.discard_pending()
            raise
        if conformance is not None and conformance.pending:
            info = conformance.attach(info)
        return wire, info

    def reset(self, seed: Any, options: Any) -> tuple[Any, dict[str, Any]]:
        """Reset, returning ``(obs, info)`` whatever the env's API.

        A vector env's ``options["reset_mask"]`` (a list of N bools once it
        has crossed the wire) reaches the env as the numpy bool array of shape
        ``(N,)`` that Gymnasium's vector envs require.

        Raises:
            ValueError: a ``reset_mask`` that is not N bools, or one for a
                vector env whose ``reset`` takes no ``options`` (it could not
                reset single lanes). Whatever the env's ``reset`` raises.
        """
        if self.vector and isinstance(options, dict) and "reset_mask" in options:
            options = {**options, "reset_mask": self._reset_mask(options["reset_mask"])}
        kwargs: dict[str, Any] = {}
        if seed is not None:
            if self.vector and isinstance(seed, list):
                seed = seed[0] if len(seed) == 1 else seed
            elif isinstance(seed, list):
                seed = seed[0]
            if self._reset_takes_seed:
                kwargs["seed"] = seed
            elif hasattr(self.env, "seed"):
                self.env.seed(seed)
        if options is not None and self._reset_takes_options:
            kwargs["options"] = options
        result = self.env.reset(**kwargs)
        if (
            isinstance(result, tuple)
            and len(result) == 2
            and (result[1] is None or isinstance(result[1], dict))
        ):
            if not self._tuple2_obs or isinstance(result[0], (tuple, list)):
                return result[0], dict(result[1] or {})
        return result, {}

    def _reset_mask(self, mask: Any) -> Any:
        """``options["reset_mask"]`` as a numpy bool array of shape ``(N,)``.

        Raises:
            ValueError: not N bools, numpy is missing, or the env's ``reset``
                takes no ``options`` (the mask would be dropped, and every lane reset).
        """
        n = self.num_envs
        if not self._reset_takes_options:
            raise ValueError(
                f"options['reset_mask'] was given, but {type(self.env).__name__}.reset() takes no options, "
                "so this vector env cannot reset single lanes"
            )
        np = _numpy()
        if np is None:  # pragma: no cover - a vector env that takes a mask brings numpy
            raise ValueError("options['reset_mask'] needs numpy on the server")
        values = mask.tolist() if hasattr(mask, "tolist") else mask
        bools = isinstance(values, (list, tuple)) and all(type(v) is bool for v in values)
        if not bools or len(values) != n:
            raise ValueError(f"options['reset_mask'] must be {n} bools (one per lane), got {mask!r}")
        return np.array(values, dtype=bool)

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step, returning Gymnasium's five values whatever the env's API.

        Raises:
            ValueError: the env returned neither 4 nor 5 values.
        """
        if self._to_framework is not None:
            action = self._to_framework(action)
        result = self.env.step(action)
        if not isinstance(result, (tuple, list)) or len(result) not in (4, 5):
            count = len(result) if isinstance(result, (tuple, list)) else type(result).__name__
            raise ValueError(f"env.step() must return 4 legacy Gym values or 5 Gymnasium values, got {count}")
        if len(result) == 5:
            obs, reward, terminated, truncated, info = result
        else:
            obs, reward, done, info = result
            terminated, truncated = self._legacy_done(done, info)
        if self.vector:
            return obs, reward, terminated, truncated, self._vector_info(info)
        # The env's own dict is passed on as is: the server only reads it (its
        # warnings go into a new dict, encode_metadata copies), so no copy per step.
        if type(info) is not dict:
            info = dict(info or {})
        return obs, _scalar_reward(reward), bool(terminated), bool(truncated), info

    def _legacy_done(self, done: Any, info: Any) -> tuple[Any, Any]:
        if not self.vector:
            truncated = bool(isinstance(info, dict) and info.get("TimeLimit.truncated", False))
            return bool(done) and not truncated, truncated
        np = _numpy()
        dones = [bool(d) for d in done]
        if isinstance(info, (list, tuple)):
            # Old gym vector envs: one info dict per lane.
            trunc = [bool(isinstance(i, dict) and i.get("TimeLimit.truncated", False)) for i in info]
        else:
            # One dict of per-lane values (gymnasium's vector info layout).
            trunc = _lane_flags(info, "TimeLimit.truncated", len(dones))
        if len(trunc) != len(dones):
            raise ValueError(f"env.step() returned {len(dones)} done flags but {len(trunc)} infos")
        term = [d and not t for d, t in zip(dones, trunc, strict=True)]
        if np is not None:
            return np.array(term, dtype=bool), np.array(trunc, dtype=bool)
        return term, trunc

    @staticmethod
    def _vector_info(info: Any) -> dict[str, Any]:
        if isinstance(info, dict):
            return info
        if isinstance(info, (list, tuple)):
            # Old gym vector envs return one dict per lane.
            return {"infos": list(info)}
        return {}

    def render(self, env_index: int) -> Any:
        """Render one lane's frame.

        Raises:
            ValueError: ``env_index`` is out of range.
        """
        if not 0 <= env_index < self.num_envs:
            raise ValueError(
                f"env_index {env_index} is out of range for an endpoint serving {self.num_envs} "
                f"environment{'s' if self.num_envs > 1 else ''}"
            )
        if not self.vector:
            return self.env.render()
        subenvs = getattr(self.env, "envs", None)
        if isinstance(subenvs, (list, tuple)) and len(subenvs) == self.num_envs:
            return subenvs[env_index].render()
        frames = self.env.render()
        if frames is None:
            return None
        if isinstance(frames, (list, tuple)) and len(frames) == self.num_envs:
            return frames[env_index]
        shape = getattr(frames, "shape", None)
        if shape is not None and len(shape) >= 1 and shape[0] == self.num_envs:
            return frames[env_index]
        return frames

    def close(self) -> None:
        """Close the env."""
        self.env.close()


def encode_render(frame: Any, sink: Sink) -> Any:
    """A render result on the wire: frames as tensors of their own dtype and shape."""
    if frame is None or isinstance(frame, (str, bytes, bool, int, float)):
        return frame
    if isinstance(frame, (list, tuple)):
        return [encode_render(f, sink) for f in frame]
    if isinstance(frame, Tensor):
        record, view = sink.target(frame.shape, DTYPES[frame.dtype])
        if frame.nbytes:
            view[:] = frame._view
        return record
    np = _numpy()
    if np is None:
        raise TypeError(f"cannot send a {type(frame).__name__} frame without numpy")
    arr = np.asarray(frame)
    from .backends.numpy import from_array

    tensor = from_array(arr) if arr.ndim else Tensor(arr.reshape(1).tobytes(), (), arr.dtype.name)
    record, view = sink.target(tensor.shape, DTYPES[tensor.dtype])
    if tensor.nbytes:
        view[:] = tensor._view
    return record
