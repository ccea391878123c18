"""Vector batches on the plain backend, as code written for the published package reads them."""

from __future__ import annotations

import numpy as np

import rlmesh
from rlmesh import Tensor


def test_a_discrete_batch_is_a_tensor_that_iterates_as_ints(serve) -> None:
    served = serve("FrozenLake-v1", num_envs=2)
    env = served.client(rlmesh.RemoteVectorEnv)
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, Tensor) and obs.dtype == "int64" and obs.shape == [2]
    # The published package returned list[int] here: ported code that iterates works.
    assert list(obs) == [0, 0]
    assert obs[0] == 0 and type(obs[1]) is int
    obs, rewards, terminated, truncated, _ = env.step([1, 1])
    assert [type(o) for o in obs] == [int, int]
    assert [float(r) for r in rewards] == list(np.zeros(2))
    assert all(type(t) is bool for t in terminated) and list(truncated) == [False, False]
    assert env.single_observation_space.shape == []
