"""SandboxModel against the real Docker daemon (skipped without one; CI sets RLMESH_REQUIRE_DOCKER=1).

The model image is built FROM the CartPole sandbox image (the same inputs as
tests/integration/test_sandbox.py, so the image is reused), with a command that
serves a NumPy policy through ``Model.serve()``: in the container that dials
back to the host. An evaluation then runs end to end: ``rlmesh.run(sandbox_model,
local_env, seeds=...)`` gives the in-process model's results.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import pytest

import rlmesh
import rlmesh.numpy as rnp
from tests.conftest import docker_or_skip

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

gymnasium = pytest.importorskip("gymnasium")

BASE = os.environ.get("RLMESH_SANDBOX_BASE_IMAGE", "rlmesh-base:bookworm")
PARAMS: dict[str, Any] = {
    "base_image": BASE,
    "packages": [f"gymnasium=={metadata.version('gymnasium')}", f"numpy=={metadata.version('numpy')}"],
}
TAG = "rlmesh-sandbox-test-model:latest"

POLICY = """
def policy(observation):
    return int(observation[2] > 0)
"""

SERVE = (
    POLICY
    + """
import gymnasium
import rlmesh.numpy as rnp

env = gymnasium.make("CartPole-v1")
rnp.Model(policy).serve(observation_space=env.observation_space, action_space=env.action_space)
"""
)


def _sandboxes(api: Any) -> list[Any]:
    return list(api.containers.list(all=True, filters={"label": "rlmesh.sandbox=1"}))


@pytest.fixture(scope="module")
def model_image() -> Iterator[str]:
    """A prebuilt image whose command serves the policy with Model.serve()."""
    api = docker_or_skip()
    try:
        try:
            api.images.get(BASE)
        except Exception:
            message = f"the sandbox base image {BASE} is missing: run `rlmesh sandbox base-image`"
            if os.environ.get("RLMESH_REQUIRE_DOCKER") == "1":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        with rnp.SandboxEnv("CartPole-v1", **PARAMS) as env:
            base = env.sandbox.image
        dockerfile = f"FROM {base}\nENTRYPOINT {json.dumps(['python', '-c', SERVE])}\n"
        api.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=TAG, network_mode="none", rm=True)
        yield TAG
        api.images.remove(TAG, force=True)
    finally:
        api.close()


def _policy() -> Any:
    scope: dict[str, Any] = {}
    exec(POLICY, scope)
    return scope["policy"]


def _outcomes(result: rlmesh.RunResult) -> list[tuple[Any, ...]]:
    return [(e.index, e.seed, e.steps, e.reward, e.terminated, e.truncated) for e in result.episodes]


def test_a_sandbox_model_runs_an_evaluation_end_to_end(model_image: str) -> None:
    api = docker_or_skip()
    try:
        seeds = [0, 7, 123]
        local = rnp.Model(_policy()).run("CartPole-v1", seeds=seeds)
        with rnp.SandboxModel(f"docker://{model_image}") as model:
            assert model.sandbox.image == model_image
            container_id = model.container_id
            assert container_id in {c.id for c in _sandboxes(api)}
            assert model.serve() is model
            assert model.data_plane == "shm"
            result = rlmesh.run(model, "CartPole-v1", seeds=seeds)
            again = model.run("CartPole-v1", seeds=seeds[:1])  # the container serves on
        assert _outcomes(result) == _outcomes(local)
        assert _outcomes(again) == _outcomes(local)[:1]
        assert container_id not in {c.id for c in _sandboxes(api)}  # stopped and removed
        with pytest.raises(ValueError, match="prebuilt image"):
            rnp.SandboxModel("CartPole-v1")
    finally:
        api.close()
