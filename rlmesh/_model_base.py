"""``ModelBase`` and ``Model``: the model classes, their corners and their hooks.

What a model is (see :mod:`rlmesh.models` for the runtime that drives one:
``run``, ``session`` and :class:`~rlmesh.models.Session`). Split from
``rlmesh.models``, which re-exports these names; their ``__module__`` stays
``rlmesh.models``, where users import them from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._bridge import IDENTITY, Bridge
from ._corners import CORNERS, derive_corners
from ._results import RunHooks, RunResult

if TYPE_CHECKING:
    from .models import Session

ObsT = TypeVar("ObsT")
ActT = TypeVar("ActT")


# -- models --------------------------------------------------------------------------


def _check_horizon(execution_horizon: Any) -> int:
    """The execution horizon, checked before anything connects.

    Raises:
        ValueError: not an int >= 1.
    """
    if isinstance(execution_horizon, bool) or not isinstance(execution_horizon, int) or execution_horizon < 1:
        raise ValueError(f"execution_horizon must be an int >= 1, got {execution_horizon!r}")
    return execution_horizon


class ModelBase(Generic[ObsT, ActT]):
    """A policy: observations in, actions out.

    Build one by wrapping a callable, ``Model(predict)``, or by subclassing and
    overriding at least one of the four predict corners:

    * ``predict(observation[, context])``: one action;
    * ``predict_chunk(observation[, execution_horizon][, context])``: a chunk
      of future actions (leading axis: time);
    * ``predict_batch(observations)``: actions for a batch whose every leaf has
      a leading lane axis ``(N, ...)``;
    * ``predict_chunk_batch(observations[, execution_horizon])``: chunks for
      a batch, leaves ``(N, H, ...)``.

    The corners a model leaves out are derived from the ones it has (a 1-lane
    batch, or the first action of a chunk), so ``predict_chunk_batch`` alone
    gives all four. An unbatched corner gets the episode's context,
    ``{"episode_id", "episode_seed"}``, only when it declares a parameter named
    ``context``; a chunk corner gets the execution horizon only when it
    declares a second positional parameter or a keyword-only
    ``execution_horizon``.

    Args:
        source: a callable used as ``predict`` (see above for its context).
            Omit it in a subclass that overrides a corner.
        spec: optional metadata about the model (kept as ``self.spec``).
        on_episode_end: called with no arguments after every episode.
        on_close: called with no arguments once, when a session closes.

    Subclass hooks: :meth:`load` (once, at the end of construction, so that
    what it sets exists right away and bad weights fail here),
    :meth:`reset` (before every episode) and :meth:`close` (when a session
    closes).

    Raises:
        TypeError: no callable source and no corner overridden; a source that
            is not callable, or is itself a Model.
        Exception: whatever :meth:`load` raises.
    """

    _bridge: Bridge = IDENTITY
    #: The backend's clients, used when the env is given as an address.
    _client_classes: tuple[type, type] | None = None
    #: Whether lanes of different envs may share one batched call (the
    #: published package's fusion across routes). A run here drives one env,
    #: whose lanes always share one call, so this is kept for compatibility only.
    allow_fusion = True
    spec: Any = None

    def __init__(
        self,
        source: Callable[..., Any] | None = None,
        *,
        spec: Any = None,
        on_episode_end: Callable[[], Any] | None = None,
        on_close: Callable[[], Any] | None = None,
    ) -> None:
        cls = type(self)
        if isinstance(source, ModelBase) or (isinstance(source, type) and issubclass(source, ModelBase)):
            raise TypeError(
                "a Model cannot wrap another Model: instantiate the Model subclass itself, "
                "or pass a predict callable"
            )
        if source is not None and not callable(source):
            raise TypeError(f"the model source must be callable, got {type(source).__name__}")
        overridden = [name for name in CORNERS if getattr(cls, name) is not getattr(ModelBase, name)]
        own = {name: getattr(self, name) for name in overridden}
        if source is None and not own:
            raise TypeError(
                f"{cls.__name__} needs a predict callable, or a subclass that overrides one of "
                "predict(), predict_chunk(), predict_batch() or predict_chunk_batch()"
            )
        corners = dict(own)
        if source is not None:
            corners["predict"] = source  # the explicit argument wins over an override
        self._source = source
        # Corners whose base method must not dispatch (they are the override itself).
        self._own_corners = frozenset(name for name, fn in corners.items() if fn is own.get(name))
        self._corners = derive_corners(
            self._bridge,
            predict=corners.get("predict"),
            predict_chunk=corners.get("predict_chunk"),
            predict_batch=corners.get("predict_batch"),
            predict_chunk_batch=corners.get("predict_chunk_batch"),
        )
        if spec is not None:
            self.spec = spec
        self._on_episode_end = on_episode_end
        self._on_close = on_close
        self.load()

    # -- what subclasses override ---------------------------------------------------------
    #
    # The base versions run the wrapped callable or a derived corner, so that
    # ``model.predict(obs)`` works on any model, in a notebook too.

    def _refuse_inherited(self, name: str) -> None:
        if name in self._own_corners:
            # Reached through super() from the override itself: nothing to fall back on.
            raise NotImplementedError(f"{name}() has no inherited implementation")

    def predict(self, observation: ObsT) -> ActT:
        """The action for one observation (no context on a direct call).

        Raises:
            NotImplementedError: called through ``super()`` from an override.
        """
        self._refuse_inherited("predict")
        action: ActT = self._corners.predict(observation, None)
        return action

    def predict_chunk(self, observation: ObsT) -> Any:
        """A chunk of actions for one observation (leading axis: time), at horizon 1.

        Raises:
            NotImplementedError: the model has no chunk corner, or this was
                called through ``super()`` from an override.
        """
        self._refuse_inherited("predict_chunk")
        corner = self._corners.predict_chunk
        if corner is None:
            raise NotImplementedError(
                "this model does not predict action chunks; override predict_chunk() or predict_chunk_batch()"
            )
        return corner(observation, 1, None)

    def predict_batch(self, observations: Any) -> Any:
        """Actions for a batch of observations (leading axis of every leaf: the lanes).

        Raises:
            NotImplementedError: the model has no batched corner, or this was
                called through ``super()`` from an override.
        """
        self._refuse_inherited("predict_batch")
        corner = self._corners.predict_batch
        if corner is None:
            raise NotImplementedError(
                "this model has no batched corner; override predict_batch() or predict_chunk_batch()"
            )
        return corner(observations)

    def predict_chunk_batch(self, observations: Any) -> Any:
        """Chunks for a batch of observations (leaves ``(N, H, ...)``), at horizon 1.

        Raises:
            NotImplementedError: the model does not override it (it derives
                from no other corner), or this was called through ``super()``.
        """
        self._refuse_inherited("predict_chunk_batch")
        corner = self._corners.predict_chunk_batch
        if corner is None:
            raise NotImplementedError("this model does not override predict_chunk_batch()")
        return corner(observations, 1)

    def load(self, **kwargs: Any) -> None:
        """Load weights or other state; called once, at the end of construction."""

    def reset(self) -> None:
        """Called before every episode."""

    def close(self) -> None:
        """Release what the model holds; called once when a session closes."""

    # -- helpers ---------------------------------------------------------------------------

    def _episode_ended(self) -> None:
        if self._on_episode_end is not None:
            self._on_episode_end()

    def _closed(self) -> None:
        try:
            self.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        env: Any,
        *,
        seeds: Sequence[int] | None = None,
        max_episodes: int | None = None,
        max_episode_steps: int | None = None,
        max_episode_seconds: float | None = None,
        hooks: RunHooks | None = None,
        close_env: bool = False,
        progress: bool | None = None,
        execution_horizon: int = 1,
    ) -> RunResult:
        """Run the model against ``env`` and return the finished episodes.

        Args:
            env: an address, a connected client, a local env object, an env
                factory, or a Gymnasium id.
            seeds: per-episode seeds (see the module's counting rules).
            max_episodes: how many episodes to run.
            max_episode_steps: cut every episode after this many steps (truncated).
            max_episode_seconds: cut every episode after this much time (truncated).
            hooks: callbacks; see :class:`RunHooks`.
            close_env: afterwards, ask an address's server to shut down, call
                a client's ``shutdown()``, or close a local env.
            progress: show a progress line on stderr (default: when stderr is
                a terminal, for runs longer than two seconds).
            execution_horizon: play this many actions of every predicted chunk
                before predicting again. Above 1 without a chunk corner, warns
                (``UserWarning``) and runs un-chunked.

        Returns:
            The :class:`RunResult`.

        Raises:
            ValueError: bad counts, caps or ``execution_horizon`` (before
            connecting). Any error of the env or the model; it carries the
            episodes finished so far as ``partial_result``.
        """
        from .models import _run  # the runtime imports this module: resolved at call time

        return _run(
            self,
            env,
            seeds=seeds,
            max_episodes=max_episodes,
            max_episode_steps=max_episode_steps,
            max_episode_seconds=max_episode_seconds,
            hooks=hooks,
            close_env=close_env,
            progress=progress,
            execution_horizon=execution_horizon,
        )

    def session(self, env: Any, *, close_env: bool = False, execution_horizon: int = 1) -> Session:
        """A :class:`Session` to drive this model against one env by hand.

        ``execution_horizon`` works as in :meth:`run`: :meth:`Session.predict`
        then plays a predicted chunk one action per call.

        Raises:
            ValueError: ``env`` serves a vector env (use :meth:`run`), or a bad
                ``execution_horizon`` (before connecting).
        """
        from .models import _open  # the runtime imports this module: resolved at call time

        return _open(
            self,
            env,
            close_env=close_env,
            allow_vector=False,
            execution_horizon=execution_horizon,
            stacklevel=3,
        )

    # -- serving -------------------------------------------------------------------------------

    def serve(
        self,
        address: str | None = None,
        *,
        options: Any = None,
        observation_space: Any = None,
        action_space: Any = None,
    ) -> None:
        """Serve this model's predict at ``address`` until stopped (SIGINT or SIGTERM); blocking.

        Clients connect with :class:`rlmesh.RemoteModel` (or its NumPy and
        JAX variants) and use it wherever a Model goes. The model declares
        the spaces it works in: ``observation_space`` and ``action_space``
        here, else attributes of those names on the model (see
        :func:`rlmesh.model_server.model_contract`). ``options`` is a
        :class:`rlmesh.ServeOptions`. For a server to start and stop from
        code, use :meth:`server`.

        Raises:
            ConnectError: the address cannot be bound.
            TypeError: the model declares no spaces.
        """
        self.server(
            address, options=options, observation_space=observation_space, action_space=action_space
        ).serve()

    def server(
        self,
        address: str | None = None,
        *,
        options: Any = None,
        observation_space: Any = None,
        action_space: Any = None,
    ) -> Any:
        """A :class:`rlmesh.model_server.ModelServer` for this model, bound but not started.

        Call its ``start()`` (a background thread) or ``serve()`` (blocking),
        and ``shutdown()`` (or use it as a context manager); ``address``
        defaults to a free TCP port on loopback and the bound one is its
        ``address``. See :meth:`serve` for the arguments.

        Raises:
            ConnectError: the address cannot be bound.
            TypeError: the model declares no spaces.
        """
        from .model_server import ModelServer

        return ModelServer(
            self, address, options=options, observation_space=observation_space, action_space=action_space
        )


class Model(ModelBase[Any, Any]):
    """A model whose corners receive :class:`rlmesh.Tensor` leaves.

    See :class:`ModelBase`.

    Example:
        >>> rlmesh.Model(lambda observation: 0).run("unix:///tmp/env.sock", seeds=[0])  # doctest: +SKIP
    """


# Public as rlmesh.models.ModelBase / rlmesh.models.Model: reprs and docs name that module.
ModelBase.__module__ = "rlmesh.models"
Model.__module__ = "rlmesh.models"
