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
stays usable). The sinks, encoders and decoders are in :mod:`rlmesh._codecs`.

Numpy is used when it is installed (Gymnasium envs need it anyway); an env
that produces rlmesh Tensors and Python values works without it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from . import spaces as S

# The sinks, encoders and decoders live in their own module; the names are
# re-exported here, where they were first defined.
from ._codecs import (
    InlineSink as InlineSink,
    ShmSink as ShmSink,
    Sink as Sink,
    _action_error as _action_error,
    _check_cast as _check_cast,
    _dict_decoder as _dict_decoder,
    _dict_encoder as _dict_encoder,
    _int_value as _int_value,
    _leaf_decoder as _leaf_decoder,
    _leaf_encoder as _leaf_encoder,
    _np_dtype as _np_dtype,
    _numpy as _numpy,
    _obs_error as _obs_error,
    _tensor_decoder as _tensor_decoder,
    _tensor_encoder as _tensor_encoder,
    _tuple_decoder as _tuple_decoder,
    _tuple_encoder as _tuple_encoder,
    compile_decoder as compile_decoder,
    compile_encoder as compile_encoder,
)
from ._conformance import Conformance, check_policy
from ._dtypes import DTYPES
from .specs import EnvContract
from .tensor import Tensor
from .values import sanitize_metadata

__all__ = ["EnvAdapter", "Sink", "is_vector_env", "to_spec"]


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
