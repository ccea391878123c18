"""Where a server's envs come from: a Gymnasium id, a factory or one shared env object.

:func:`_make_source` picks the source for :class:`rlmesh.server.EnvServer`: an
:class:`_EnvSource` handing out env adapters to sessions, or, for a vector env
served with workers, the vector fast path's worker pool. Split from
``rlmesh.server``, which re-exports these names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._adapter import EnvAdapter
from ._restart import RestartPolicy
from .errors import BusyError, ClosedError, RLMeshError

#: The logger of ``rlmesh.server``, where this code was first: log filters keep working.
log = logging.getLogger("rlmesh.server")

# -- where envs come from ------------------------------------------------------------


def _gym_factory(
    env_id: str,
    num_envs: int | None,
    kwargs: dict[str, Any],
    autoreset_mode: str | None = None,
    vectorization_mode: str | None = None,
) -> Callable[[], Any]:
    def make() -> Any:
        try:
            import gymnasium
        except ImportError as exc:
            from .errors import BackendUnavailable

            raise BackendUnavailable(
                f'serving the Gymnasium id {env_id!r} needs gymnasium: pip install "rlmesh[gymnasium]"'
            ) from exc
        if num_envs is not None and num_envs > 1:
            # "sync" is Gymnasium's SyncVectorEnv of per-lane makes (per-lane
            # seed lists and masks work); None or "vector_entry_point" is
            # make_vec's own choice (e.g. CartPole's native vector env).
            extra: dict[str, Any] = {}
            if vectorization_mode is not None:
                extra["vectorization_mode"] = vectorization_mode
            if autoreset_mode is not None:
                from gymnasium.vector import AutoresetMode

                extra.setdefault("vectorization_mode", "sync")
                extra["vector_kwargs"] = {"autoreset_mode": AutoresetMode(autoreset_mode)}
            return gymnasium.make_vec(env_id, num_envs=num_envs, **extra, **kwargs)
        return gymnasium.make(env_id, **kwargs)

    return make


class _EnvSource:
    """Hands out env adapters to sessions."""

    def __init__(
        self,
        env: Any,
        num_envs: int | None,
        make_kwargs: dict[str, Any],
        *,
        close_shared: bool = True,
        validation: str = "warn",
        to_framework: Callable[[Any], Any] | None = None,
        autoreset_mode: str | None = None,
        vectorization_mode: str | None = None,
    ) -> None:
        self._close_shared = close_shared
        self._adapter_options: dict[str, Any] = {"validation": validation, "to_framework": to_framework}
        if isinstance(env, str):
            self.factory: Callable[[], Any] | None = _gym_factory(
                env, num_envs, make_kwargs, autoreset_mode, vectorization_mode
            )
        elif isinstance(env, type) or (callable(env) and not hasattr(env, "step")):
            self.factory = env
        else:
            self.factory = None
        self._lock = threading.Lock()
        self._spare: EnvAdapter | None = None
        self._shared_busy = False
        self._closed = False
        if self.factory is None:
            self.shared: EnvAdapter | None = EnvAdapter(env, **self._adapter_options)
            self.contract = self.shared.contract
        else:
            self.shared = None
            self._spare = EnvAdapter(self.factory(), **self._adapter_options)
            self.contract = self._spare.contract

    def acquire(self) -> EnvAdapter:
        """An adapter for a new session.

        Raises:
            BusyError: the shared env object already has a session.
        """
        with self._lock:
            if self._closed:
                raise ClosedError("the server is shutting down")
            if self.shared is not None:
                if self._shared_busy:
                    raise BusyError(
                        "this server serves a single env object and another client is connected; "
                        "only one client at a time can drive it (serve a factory or an env id to "
                        "give every client its own env)"
                    )
                self._shared_busy = True
                self.shared.begin_session()
                return self.shared
            spare, self._spare = self._spare, None
        if spare is not None:
            return spare
        assert self.factory is not None
        adapter = EnvAdapter(self.factory(), **self._adapter_options)
        if adapter.contract != self.contract:
            adapter.close()
            raise RLMeshError("the env factory built an env with a different contract than the first one")
        return adapter

    def release(self, adapter: EnvAdapter, close_timeout: float) -> None:
        """A session is done with its adapter."""
        if adapter is self.shared:
            with self._lock:
                self._shared_busy = False
            return
        _close_env(adapter, close_timeout)

    def close(self, close_timeout: float) -> None:
        """Close what is not in use: the shared env (exactly once) and the spare."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            spare, self._spare = self._spare, None
        if self.shared is not None and self._close_shared:
            _close_env(self.shared, close_timeout)
        if spare is not None:
            _close_env(spare, close_timeout)


def _close_env(adapter: EnvAdapter, timeout: float) -> None:
    # env.close() runs on a helper thread so a hanging close cannot hold the
    # server past its close timeout.
    done = threading.Event()

    def run() -> None:
        try:
            adapter.close()
        except Exception:  # the env's failure to close is logged, not fatal
            log.exception("env.close() raised")
        finally:
            done.set()

    thread = threading.Thread(target=run, name="rlmesh-env-close", daemon=True)
    thread.start()
    if not done.wait(timeout):
        log.warning("env.close() did not finish within %.1fs; leaving it behind", timeout)


if TYPE_CHECKING:
    from .vector.pool import VectorEnvSource


def _make_source(
    env: Any,
    num_envs: int | None,
    kwargs: dict[str, Any],
    *,
    vectorization_mode: str | None,
    workers: int | None,
    autoreset_mode: str | None,
    close_shared: bool,
    validation: str,
    to_framework: Callable[[Any], Any] | None,
    restart: RestartPolicy | None = None,
) -> _EnvSource | VectorEnvSource:
    """The env source: a worker pool per session (the fast path) or one env per session (or shared)."""
    if vectorization_mode not in (None, "async", "sync", "vector_entry_point"):
        raise ValueError(
            'vectorization_mode must be "async", "sync", "vector_entry_point" or None, '
            f"got {vectorization_mode!r}"
        )
    if restart is not None and not isinstance(restart, RestartPolicy):
        raise TypeError(f"restart must be a RestartPolicy or None, got {type(restart).__name__}")
    factory_like = (
        isinstance(env, str) or isinstance(env, type) or (callable(env) and not hasattr(env, "step"))
    )
    if vectorization_mode in (None, "async") and num_envs is not None and num_envs >= 2 and factory_like:
        from .vector.pool import VectorEnvSource

        try:
            return VectorEnvSource(
                env,
                num_envs,
                kwargs,
                autoreset_mode=autoreset_mode or "NextStep",
                workers=workers,
                validation=validation,
                to_framework=to_framework,
                restart=restart,
            )
        except TypeError as exc:
            if vectorization_mode == "async":
                raise
            log.info("serving without the vector fast path (%s)", exc)
    elif vectorization_mode == "async":
        raise ValueError(
            'vectorization_mode="async" needs num_envs >= 2 and a Gymnasium id or a factory of single envs'
        )
    if workers is not None:
        raise ValueError('workers= is for the vector fast path (vectorization_mode="async")')
    if restart is not None:
        raise ValueError('restart= is for the vector fast path\'s workers (vectorization_mode="async")')
    return _EnvSource(
        env,
        num_envs,
        kwargs,
        close_shared=close_shared,
        validation=validation,
        to_framework=to_framework,
        autoreset_mode=autoreset_mode,
        vectorization_mode=vectorization_mode,
    )


# -- sessions --------------------------------------------------------------------------
