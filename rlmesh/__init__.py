"""rlmesh: a model and a Gymnasium environment in different processes.

They talk through ``reset`` / ``step`` / ``render`` / ``close``, over a
shared-memory data plane.

General layout (a module imports only from its own layer or those below):

* layer 0 — ``errors``, ``types``: the standard library only;
* layer 1 — ``tensor``, ``values``, ``spaces``, ``specs``: the data model, no I/O;
* layer 2 — ``shm`` (bytes in shared memory) and ``net`` (frames on sockets),
  which never import each other;
* layer 3 — ``backends``: numpy and JAX bridges, imported lazily;
* layer 4 — the endpoints (server, clients, models) that compose layers 1-3;
* layer 5 — ``sandbox``: Docker sandboxes.

Importing ``rlmesh`` loads layers 0 and 1 only: never numpy, JAX, Gymnasium
or Docker.
"""

from __future__ import annotations

import sys

if sys.byteorder != "little":  # pragma: no cover - no big-endian CI machine
    raise RuntimeError("rlmesh needs a little-endian host: the wire encoding of tensors is little-endian")

import importlib
from typing import TYPE_CHECKING, Any

from . import errors as errors, types as types
from ._restart import RestartPolicy as RestartPolicy
from .errors import (
    AuthenticationError as AuthenticationError,
    BackendUnavailable as BackendUnavailable,
    BrokenError as BrokenError,
    BusyError as BusyError,
    ClosedError as ClosedError,
    ConnectError as ConnectError,
    EndpointLostError as EndpointLostError,
    InvalidActionError as InvalidActionError,
    OperationTimeout as OperationTimeout,
    ProtocolError as ProtocolError,
    RemoteError as RemoteError,
    RLMeshError as RLMeshError,
    SpecError as SpecError,
    WorkerError as WorkerError,
)
from .tensor import Tensor as Tensor
from .values import sanitize_metadata as sanitize_metadata

if TYPE_CHECKING:
    from . import spaces as spaces, specs as specs
    from .client import RemoteEnv as RemoteEnv, RemoteVectorEnv as RemoteVectorEnv
    from .model_server import ModelServer as ModelServer
    from .models import (
        RANDOM_SAMPLE as RANDOM_SAMPLE,
        EpisodeResult as EpisodeResult,
        Model as Model,
        ModelBase as ModelBase,
        RunHooks as RunHooks,
        RunResult as RunResult,
        Session as Session,
        StepEvent as StepEvent,
        run as run,
        session as session,
    )
    from .remote_model import RemoteModel as RemoteModel
    from .server import EnvServer as EnvServer, ServeOptions as ServeOptions
    from .vector.sharded import ShardedVectorEnv as ShardedVectorEnv

__version__ = "0.1.0"

# Public names loaded on first access: `import rlmesh` stays cheap, and the
# endpoints (sockets, shared memory, threads) load only when used.
# Each entry maps a name to (module, attribute); attribute None means the module.
_LAZY: dict[str, tuple[str, str | None]] = {
    "spaces": ("rlmesh.spaces", None),
    "specs": ("rlmesh.specs", None),
    "EnvServer": ("rlmesh.server", "EnvServer"),
    "ServeOptions": ("rlmesh.server", "ServeOptions"),
    "RemoteEnv": ("rlmesh.client", "RemoteEnv"),
    "RemoteVectorEnv": ("rlmesh.client", "RemoteVectorEnv"),
    "ShardedVectorEnv": ("rlmesh.vector.sharded", "ShardedVectorEnv"),
    "Model": ("rlmesh.models", "Model"),
    "ModelBase": ("rlmesh.models", "ModelBase"),
    "run": ("rlmesh.models", "run"),
    "session": ("rlmesh.models", "session"),
    "Session": ("rlmesh.models", "Session"),
    "RunResult": ("rlmesh.models", "RunResult"),
    "EpisodeResult": ("rlmesh.models", "EpisodeResult"),
    "RunHooks": ("rlmesh.models", "RunHooks"),
    "StepEvent": ("rlmesh.models", "StepEvent"),
    "RANDOM_SAMPLE": ("rlmesh.models", "RANDOM_SAMPLE"),
    "RemoteModel": ("rlmesh.remote_model", "RemoteModel"),
    "ModelServer": ("rlmesh.model_server", "ModelServer"),
    # Layer 6; docker is imported only when a sandbox starts.
    "SandboxEnv": ("rlmesh.sandbox.env", "SandboxEnv"),
    "SandboxVectorEnv": ("rlmesh.sandbox.env", "SandboxVectorEnv"),
    "SandboxInfo": ("rlmesh.sandbox.env", "SandboxInfo"),
    "SandboxModel": ("rlmesh.sandbox.model", "SandboxModel"),
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'rlmesh' has no attribute {name!r}")
    module_name, attribute = target
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "AuthenticationError",
    "BackendUnavailable",
    "BrokenError",
    "BusyError",
    "ClosedError",
    "ConnectError",
    "EndpointLostError",
    "EnvServer",
    "EpisodeResult",
    "errors",
    "InvalidActionError",
    "Model",
    "ModelBase",
    "ModelServer",
    "OperationTimeout",
    "ProtocolError",
    "RANDOM_SAMPLE",
    "RemoteEnv",
    "RemoteError",
    "RemoteModel",
    "RemoteVectorEnv",
    "RestartPolicy",
    "RLMeshError",
    "run",
    "RunHooks",
    "RunResult",
    "SandboxEnv",
    "SandboxInfo",
    "SandboxModel",
    "SandboxVectorEnv",
    "ShardedVectorEnv",
    "sanitize_metadata",
    "ServeOptions",
    "Session",
    "session",
    "spaces",
    "SpecError",
    "specs",
    "StepEvent",
    "Tensor",
    "types",
    "WorkerError",
]
