"""What a served env promises its clients: the :class:`EnvContract`.

The contract is exchanged once, in the handshake, as a msgpack-able dict. It
names the env, says how many lanes it steps, and describes one lane's
observation and action spaces as :class:`~rlmesh.spaces.SpaceSpec` objects.

Like :mod:`rlmesh.spaces`, this module is pure data (layer 1) and imports no
array library.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any, NoReturn

from .errors import SpecError
from .spaces import Space, SpaceSpec, from_gymnasium_space
from .spaces._walk import tensor_leaf_sizes, wire_size_bound

__all__ = ["EnvContract", "SpaceSpec"]

_AUTORESET_MODES = ("NextStep", "SameStep", "Disabled")
_MAX_ID_LENGTH = 1024
_MAX_RENDER_MODE_LENGTH = 1024
# Far above any real vector env; stops a hostile peer from making us size
# per-lane buffers from an absurd count.
_MAX_NUM_ENVS = 1 << 20

_REQUIRED_KEYS = frozenset({"id", "observation_space", "action_space"})
_OPTIONAL_KEYS = frozenset({"render_mode", "num_envs", "metadata", "autoreset_mode"})


def _fail(from_dict: bool, message: str, *, type_error: bool = False) -> NoReturn:
    # Dicts come off the wire (SpecError); constructor arguments come from code.
    if from_dict:
        raise SpecError(message)
    if type_error:
        raise TypeError(message)
    raise ValueError(message)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_space(value: Any, name: str, from_dict: bool) -> SpaceSpec:
    if isinstance(value, SpaceSpec):
        return value
    if isinstance(value, Space):
        return value.spec
    if isinstance(value, Mapping):
        try:
            return SpaceSpec.from_dict(value)
        except SpecError as exc:
            raise SpecError(f"{name}: {exc}") from None
    if not from_dict and type(value).__module__.split(".")[0] == "gymnasium":
        return from_gymnasium_space(value).spec
    _fail(
        from_dict,
        f"{name} must be a SpaceSpec, a space or a spec dict, got {type(value).__name__}",
        type_error=True,
    )


class EnvContract:
    """The description of a served env, exchanged in the handshake.

    Immutable and compared by content. For vector envs the spaces are those
    of a single lane.

    Args:
        id: the env's id, such as "CartPole-v1" (1 to 1024 characters).
        observation_space: one lane's observation space: a SpaceSpec, an rlmesh
            space, a spec dict or a Gymnasium space.
        action_space: one lane's action space, in the same forms.
        render_mode: the env's render mode, or None.
        num_envs: the number of lanes, >= 1.
        metadata: the env's metadata, already sanitised to msgpack-able values.
        autoreset_mode: "NextStep", "SameStep" or "Disabled"; None picks
            "NextStep" for vector envs (Gymnasium's default) and "Disabled" for
            a single env, which has no autoreset.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an empty or overlong id, ``num_envs < 1``, or an unknown
            autoreset mode.
    """

    __slots__ = (
        "_id",
        "_render_mode",
        "_num_envs",
        "_metadata",
        "_autoreset_mode",
        "_observation_space",
        "_action_space",
    )

    _id: str
    _render_mode: str | None
    _num_envs: int
    _metadata: dict[str, Any]
    _autoreset_mode: str
    _observation_space: SpaceSpec
    _action_space: SpaceSpec

    def __init__(
        self,
        id: str,
        observation_space: Any,
        action_space: Any,
        *,
        render_mode: str | None = None,
        num_envs: int = 1,
        metadata: Mapping[str, Any] | None = None,
        autoreset_mode: str | None = None,
    ) -> None:
        self._init(
            id,
            observation_space,
            action_space,
            render_mode,
            num_envs,
            metadata,
            autoreset_mode,
            from_dict=False,
        )

    def _init(
        self,
        id: Any,
        observation_space: Any,
        action_space: Any,
        render_mode: Any,
        num_envs: Any,
        metadata: Any,
        autoreset_mode: Any,
        *,
        from_dict: bool,
    ) -> None:
        if not isinstance(id, str):
            _fail(from_dict, f"id must be a str, got {type(id).__name__}", type_error=True)
        if not id or len(id) > _MAX_ID_LENGTH:
            _fail(from_dict, f"id must have 1 to {_MAX_ID_LENGTH} characters, got {len(id)}")
        if render_mode is not None:
            if not isinstance(render_mode, str):
                _fail(
                    from_dict,
                    f"render_mode must be a str or None, got {type(render_mode).__name__}",
                    type_error=True,
                )
            if len(render_mode) > _MAX_RENDER_MODE_LENGTH:
                _fail(from_dict, f"render_mode is longer than {_MAX_RENDER_MODE_LENGTH} characters")
        if isinstance(num_envs, bool) or not hasattr(type(num_envs), "__index__"):
            _fail(
                from_dict,
                f"num_envs must be an int, got {type(num_envs).__name__}",
                type_error=True,
            )
        lanes = operator.index(num_envs)
        if not 1 <= lanes <= _MAX_NUM_ENVS:
            _fail(from_dict, f"num_envs must be between 1 and {_MAX_NUM_ENVS}, got {lanes}")
        if metadata is None:
            meta: dict[str, Any] = {}
        elif isinstance(metadata, Mapping):
            meta = dict(metadata)
            if not all(isinstance(key, str) for key in meta):
                _fail(from_dict, "metadata keys must be strings", type_error=True)
        else:
            _fail(
                from_dict,
                f"metadata must be a dict, got {type(metadata).__name__}",
                type_error=True,
            )
        if autoreset_mode is None:
            mode = "NextStep" if lanes > 1 else "Disabled"
        elif isinstance(autoreset_mode, str) and autoreset_mode in _AUTORESET_MODES:
            mode = autoreset_mode
        else:
            _fail(
                from_dict,
                f"autoreset_mode must be one of {', '.join(_AUTORESET_MODES)}, got {_short(autoreset_mode)}",
            )
        obs = _check_space(observation_space, "observation_space", from_dict)
        act = _check_space(action_space, "action_space", from_dict)
        for name, value in (
            ("_id", id),
            ("_render_mode", render_mode),
            ("_num_envs", lanes),
            ("_metadata", meta),
            ("_autoreset_mode", mode),
            ("_observation_space", obs),
            ("_action_space", act),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("EnvContract is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("EnvContract is immutable")

    @property
    def id(self) -> str:
        """The env's id."""
        return self._id

    @property
    def render_mode(self) -> str | None:
        """The env's render mode, or None."""
        return self._render_mode

    @property
    def num_envs(self) -> int:
        """The number of lanes: 1 for a single env."""
        return self._num_envs

    @property
    def metadata(self) -> dict[str, Any]:
        """The env's metadata (a copy: the contract itself never changes)."""
        return dict(self._metadata)

    @property
    def autoreset_mode(self) -> str:
        """The autoreset mode: "NextStep", "SameStep" or "Disabled"."""
        return self._autoreset_mode

    @property
    def observation_space(self) -> SpaceSpec:
        """One lane's observation space."""
        return self._observation_space

    @property
    def action_space(self) -> SpaceSpec:
        """One lane's action space."""
        return self._action_space

    @property
    def env(self) -> EnvContract:
        """This contract (an alias kept from the published API)."""
        return self

    @property
    def spec(self) -> EnvContract:
        """This contract (an alias kept from the published API)."""
        return self

    def to_dict(self) -> dict[str, Any]:
        """The msgpack-able dict form, which :meth:`from_dict` reads back exactly."""
        return {
            "id": self._id,
            "render_mode": self._render_mode,
            "num_envs": self._num_envs,
            "metadata": dict(self._metadata),
            "autoreset_mode": self._autoreset_mode,
            "observation_space": self._observation_space.to_dict(),
            "action_space": self._action_space.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnvContract:
        """Validate a contract dict (possibly from an untrusted peer) and build it.

        ``id``, ``observation_space`` and ``action_space`` are required; the
        other keys take the constructor's defaults when absent.

        Raises:
            SpecError: a malformed dict, an unknown or missing key, or an
                invalid value (including an invalid space spec).
        """
        if not isinstance(data, Mapping):
            raise SpecError(f"an env contract must be a dict, got {type(data).__name__}")
        keys = set()
        for key in data:
            if not isinstance(key, str):
                raise SpecError(f"env contract keys must be strings, got {_short(key)}")
            keys.add(key)
        unknown = keys - _REQUIRED_KEYS - _OPTIONAL_KEYS
        if unknown:
            raise SpecError(f"unknown env contract keys: {', '.join(sorted(map(_short, unknown)))}")
        missing = _REQUIRED_KEYS - keys
        if missing:
            raise SpecError(f"missing env contract keys: {', '.join(sorted(missing))}")
        if not isinstance(data["observation_space"], Mapping):
            raise SpecError("observation_space must be a spec dict")
        if not isinstance(data["action_space"], Mapping):
            raise SpecError("action_space must be a spec dict")
        contract = cls.__new__(cls)
        contract._init(
            data["id"],
            data["observation_space"],
            data["action_space"],
            data.get("render_mode"),
            data.get("num_envs", 1),
            data.get("metadata"),
            data.get("autoreset_mode"),
            from_dict=True,
        )
        return contract

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EnvContract):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        # Metadata is a dict and cannot be hashed; equal contracts still hash alike.
        return hash((self._id, self._num_envs, self._observation_space, self._action_space))

    def __reduce__(self) -> tuple[Any, ...]:
        return (EnvContract.from_dict, (self.to_dict(),))

    def __repr__(self) -> str:
        return (
            f"EnvContract(id={self._id!r}, num_envs={self._num_envs}, "
            f"observation_space={self._observation_space!r}, "
            f"action_space={self._action_space!r}, render_mode={self._render_mode!r}, "
            f"autoreset_mode={self._autoreset_mode!r})"
        )


# -- sizes the endpoints derive from a contract ------------------------------------------
# Not exported: the server sizes a session's slab rings and its request ring
# from these, and the vector batch slab will size its lanes the same way.

# A vector env's step carries its rewards as float64 and each flag as one byte a lane.
_REWARD_BYTES = 8
_FLAG_BYTES = 1
# The request message's own fields (its tag, the call, the action's key) around the action.
_REQUEST_OVERHEAD = 256

#: On a shared-memory session, a response's tensor leaves smaller than this
#: many bytes travel inline in the ring record (copied once on each side),
#: and leaves of this size and more in slab blocks, as zero-copy views with
#: a lease. For a small leaf the copy costs less than the lease's
#: bookkeeping (a handle, its check, a release on the next request); from
#: about this size on, the copy costs more.
SHM_INLINE_LIMIT = 16 << 10
# The message's own fields around the inline tensors of a response (its tag,
# reward, flags, info, each tensor's record and 64-byte alignment).
_RESPONSE_OVERHEAD = 4096


def step_tensor_sizes(contract: EnvContract) -> list[int]:
    """The bytes of every tensor a step response carries.

    The observation's tensor leaves in leaf order (see
    :func:`rlmesh.spaces._walk.tensor_leaf_sizes`), then, for a vector env,
    its rewards, terminations and truncations.
    """
    n = contract.num_envs
    batch = n if n > 1 else None
    sizes = tensor_leaf_sizes(contract.observation_space, batch)
    if batch is not None:
        sizes.extend([_REWARD_BYTES * n, _FLAG_BYTES * n, _FLAG_BYTES * n])
    return sizes


def slab_tensor_sizes(contract: EnvContract) -> list[int]:
    """The sizes of :func:`step_tensor_sizes` that travel in slab blocks (not inline) over shared memory."""
    return [n for n in step_tensor_sizes(contract) if n >= SHM_INLINE_LIMIT]


def response_bytes_bound(contract: EnvContract) -> int:
    """About the largest step response whose tensors all travel inline over shared memory.

    The inline leaves (64-byte aligned) and the message around them; an
    ``info`` beyond :data:`_RESPONSE_OVERHEAD` may make the message larger (it
    then travels on the socket, announced in the ring: correct, only slower).
    """
    inline = sum(-(-n // 64) * 64 for n in step_tensor_sizes(contract) if n < SHM_INLINE_LIMIT)
    return inline + _RESPONSE_OVERHEAD


def action_bytes_bound(contract: EnvContract) -> int:
    """An upper bound on the encoded size of a step request: every lane's action and the message."""
    return wire_size_bound(contract.action_space) * contract.num_envs + _REQUEST_OVERHEAD
