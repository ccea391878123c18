"""What the peers of ``bench_transports`` share: the workloads' envs, and the published package.

The rlmesh cells serve ``rlmesh._demo:ImageEnv``; the peers cannot use it
(gymnasium's AsyncVectorEnv wants Gymnasium spaces, and the published package
runs in an interpreter that cannot import this tree), so they get this
identical copy: same frame sizes, same per-step work. Imports only the standard
library at the top, and numpy and gymnasium when an env is made, so that
``_peer_server.py`` and ``_peer_client.py`` can import it in the published
package's interpreter.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

#: This repository: its ``rlmesh`` is never the published package.
REPOSITORY = Path(__file__).resolve().parent.parent

#: The env kinds a workload names: a Gymnasium id, or the demo's image env.
CARTPOLE = "CartPole-v1"
IMAGE = "image"


class ImageEnv:
    """A uint8 image of about ``nbytes`` bytes per observation, as ``rlmesh._demo.ImageEnv``.

    Each step writes the step count into the first row of a new frame (two
    frames alternate), so every observation differs from the last.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    render_mode = None

    def __init__(self, nbytes: int = 28 * 1024, episode_length: int = 1000) -> None:
        import numpy as np
        from gymnasium import spaces

        width = 64
        height = max(1, nbytes // (width * 4))
        self.observation_space = spaces.Box(0, 255, (height, width, 4), np.uint8)
        self.action_space = spaces.Discrete(2)
        self._frames = [np.zeros((height, width, 4), np.uint8) for _ in range(2)]
        self._t = 0
        self._episode_length = episode_length

    def _frame(self) -> Any:
        frame = self._frames[self._t & 1]
        frame[0, :8, 0] = self._t & 0xFF
        return frame

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._t = 0
        return self._frame(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self._t += 1
        return self._frame(), 1.0, False, self._t >= self._episode_length, {}

    def close(self) -> None:
        pass


def make_env(kind: str, kwargs: dict[str, Any]) -> Any:
    """A fresh env of ``kind`` (:data:`CARTPOLE` or :data:`IMAGE`)."""
    if kind == CARTPOLE:
        import gymnasium as gym

        return gym.make(CARTPOLE, **kwargs)
    if kind == IMAGE:
        return ImageEnv(**kwargs)
    raise ValueError(f"unknown env kind {kind!r}; choose {CARTPOLE!r} or {IMAGE!r}")


def obs_bytes(kind: str, kwargs: dict[str, Any]) -> int:
    """Bytes in one observation of that env (CartPole: four float32s)."""
    if kind == CARTPOLE:
        return 16
    height = max(1, int(kwargs.get("nbytes", 28 * 1024)) // 256)
    return height * 64 * 4


def import_published() -> ModuleType:
    """Import the published ``rlmesh``; exit with a message if this repository's would be imported.

    ``bench_transports`` runs the peer scripts with ``python -I`` (neither the
    working directory nor ``PYTHONPATH`` on ``sys.path``), so only the peer
    interpreter's own installation can be found; this checks it.
    """
    import rlmesh

    where = Path(rlmesh.__file__).resolve()
    if REPOSITORY in where.parents:
        raise SystemExit(
            f"{where} is this repository's rlmesh, not the published package: "
            "run the peer scripts with the peer's interpreter and -I"
        )
    return rlmesh
