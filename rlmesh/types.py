"""Public type aliases and protocols of rlmesh.

This module depends on the standard library only, so it can be imported (or
loaded by path) without the rest of the package, for type checking in
projects that do not install rlmesh's dependencies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

if TYPE_CHECKING:
    from .tensor import Tensor

__all__ = [
    "EnvLike",
    "EnvTarget",
    "HasAddress",
    "HasEnvContract",
    "InfoDict",
    "LocalEnvTarget",
    "Metadata",
    "PrimitiveValue",
    "SpaceLike",
    "SpecArg",
    "SupportsMake",
    "SupportsResetStep",
    "Value",
    "VectorEnvLike",
]

#: The scalar leaves of a value tree.
PrimitiveValue = Union[None, bool, int, float, str, bytes]

#: A value that can cross the wire: primitives, tensors, and nested
#: lists, tuples and string-keyed dicts of those.
Value = Union[
    PrimitiveValue,
    "Tensor",
    list["Value"],
    tuple["Value", ...],
    dict[str, "Value"],
]

#: JSON-like metadata (env ``metadata``, ``info`` dicts) after sanitising:
#: no tensors, no arrays; tuples become lists.
Metadata = Union[PrimitiveValue, list["Metadata"], dict[str, "Metadata"]]

#: An ``info`` dict as returned by ``reset`` and ``step``.
InfoDict = dict[str, Any]

#: Anything accepted where a space spec is expected: an rlmesh space, a
#: ``SpaceSpec``, its dict form, or a Gymnasium space.
SpecArg = Any


@runtime_checkable
class SpaceLike(Protocol):
    """Something with ``sample()`` and ``contains()``, like a Gymnasium space."""

    def sample(self) -> Any:
        """Draw a random element."""
        ...

    def contains(self, value: Any) -> bool:
        """True if ``value`` is an element of the space."""
        ...


@runtime_checkable
class SupportsResetStep(Protocol):
    """The part of the Gymnasium ``Env`` API rlmesh drives."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        """Start an episode."""
        ...

    def step(self, action: Any) -> Any:
        """Advance one step."""
        ...


@runtime_checkable
class EnvLike(SupportsResetStep, Protocol):
    """A single environment: reset, step, close, and its two spaces."""

    observation_space: Any
    action_space: Any

    def close(self) -> None:
        """Release the environment's resources."""
        ...


@runtime_checkable
class VectorEnvLike(EnvLike, Protocol):
    """A vector environment: ``num_envs`` lanes stepped together."""

    num_envs: int
    single_observation_space: Any
    single_action_space: Any


@runtime_checkable
class HasAddress(Protocol):
    """An object that knows the address of an rlmesh endpoint."""

    @property
    def address(self) -> str:
        """The endpoint's address, such as ``unix:///tmp/env.sock``."""
        ...


@runtime_checkable
class HasEnvContract(Protocol):
    """An object exposing the contract of the env it serves or drives."""

    @property
    def env_contract(self) -> Any:
        """The :class:`rlmesh.specs.EnvContract`."""
        ...


@runtime_checkable
class SupportsMake(Protocol):
    """A zero-argument factory that builds an environment."""

    def __call__(self) -> EnvLike:
        """Build the environment."""
        ...


#: A local environment to serve or run against: an env object, a zero-argument
#: factory, or a Gymnasium id.
LocalEnvTarget = Union[EnvLike, Callable[[], Any], str]

#: Anything ``run`` accepts as its environment: a local target, an address
#: string, or a connected client (anything with an ``address``).
EnvTarget = Union[LocalEnvTarget, HasAddress]
