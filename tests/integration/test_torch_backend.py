"""rlmesh.torch: conversions, the version floor, zero-copy observations from shared memory, torch envs.

Needs torch (the ``torch`` extra): skipped without it, failed under
RLMESH_REQUIRE_SB3=1 (CI installs a CPU torch).
"""

from __future__ import annotations

import gc
import subprocess
import sys
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh import Tensor
from tests.conftest import ROOT, import_or_skip
from tests.envs import CountEnv

torch = import_or_skip("torch")
rt = import_or_skip("rlmesh.torch")

pytestmark = pytest.mark.timeout(120)

DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
]


def shm_mapping(address: int) -> str | None:
    """The /proc/self/maps line of the mapping holding ``address``."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return line.strip()
    return None


@pytest.mark.parametrize("name", DTYPES)
def test_as_tensor_views_or_copies_and_from_tensor_copies(name: str) -> None:
    dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    source = (np.arange(12) % 3).astype(dtype).reshape(3, 4)
    tensor = Tensor(source.tobytes(), (3, 4), name)
    view = rt.as_tensor(tensor)
    assert view.data_ptr() == tensor.address and tuple(view.shape) == (3, 4)
    assert str(view.dtype) == f"torch.{name}"
    copy = rt.as_tensor(tensor, copy=True)
    assert copy.data_ptr() != tensor.address
    copy.zero_()  # owned and writable; the tensor is untouched
    assert bytes(view.view(torch.uint8).flatten().tolist()) == source.tobytes()
    back = rt.from_tensor(view)
    assert isinstance(back, Tensor) and back.dtype == name and back.shape == [3, 4]
    assert back.address != tensor.address and bytes(back.buffer) == source.tobytes()


def test_from_tensor_detaches_makes_contiguous_and_unwraps_scalars() -> None:
    grad = torch.ones(3, requires_grad=True) * 2
    assert rt.from_tensor(grad).tolist() == [2.0, 2.0, 2.0]
    assert rt.from_tensor(torch.arange(10)[::3]).tolist() == [0, 3, 6, 9]
    assert rt.from_tensor(torch.tensor(3.5)) == 3.5 and type(rt.from_tensor(torch.tensor(7))) is int
    assert rt.as_tensor(2).item() == 2 and rt.as_tensor(True).dtype == torch.bool
    with pytest.raises(TypeError):
        rt.from_tensor(np.zeros(3))
    with pytest.raises(TypeError):
        rt.as_tensor(np.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(BufferError):
        rt.from_tensor(torch.zeros(2, dtype=torch.complex64))


def test_ensure_available_enforces_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    rt.ensure_available()
    monkeypatch.setattr(torch, "__version__", "2.2.1")
    with pytest.raises(ImportError, match="torch >= 2.3"):
        rt.ensure_available()
    with pytest.raises(ImportError, match="torch >= 2.3"):
        rt.Model(lambda obs: 0)
    monkeypatch.undo()
    rt.ensure_available()


def test_spaces_sample_torch_tensors() -> None:
    space = rt.space_from_spec(rlmesh.spaces.Box(-1.0, 1.0, (3,)).spec)
    space.seed(0)
    sample = space.sample()
    assert isinstance(sample, torch.Tensor) and tuple(sample.shape) == (3,) and space.contains(sample)


def test_observations_over_shared_memory_are_views_of_the_slab_held_past_the_ring(serve: Any) -> None:
    served = serve(lambda: CountEnv(limit=10_000, width=4096))  # every client its own env; 16 KiB blocks
    env = served.client(rt.RemoteEnv, copy=False)
    twin = served.client(rnp.RemoteEnv)
    assert env.data_plane == "shm"
    obs, _ = env.reset(seed=2)
    twin.reset(seed=2)
    held, expected = [], []
    for i in range(50):
        action = i % 3
        held.append(env.step(action)[0])
        expected.append(twin.step(action)[0])
    for _ in range(100):  # far past the ring depth: no held block may be reused
        env.step(0)
    pointers = [o.data_ptr() for o in held]
    assert all(isinstance(o, torch.Tensor) and o.dtype == torch.float32 for o in held)
    mappings = {shm_mapping(p) for p in pointers}
    # A Unix session's slab is a sealed memfd (named /dev/shm segments are TCP's).
    assert all(m is not None and "/memfd:rlm-" in m for m in mappings), mappings
    assert len(set(pointers)) == 50 and all(p % 64 == 0 for p in pointers)
    # Bit for bit the NumPy client's observations.
    for have, want in zip(held, expected, strict=True):
        assert have.numpy().tobytes() == want.tobytes()
    assert [float(o[0]) for o in held] == [float(i + 1) for i in range(50)]
    leases = max(session["leases"] for session in served.server.stats()["sessions"])
    assert leases >= 50
    del held, obs
    gc.collect()
    env.step(0)  # releases travel with this request
    assert max(session["leases"] for session in served.server.stats()["sessions"]) <= 2


def test_default_observations_are_owned_writable_copies(serve: Any) -> None:
    served = serve(CountEnv(limit=10_000))
    env = served.client(rt.RemoteEnv)
    env.reset(seed=0)
    obs = env.step(1)[0]
    assert isinstance(obs, torch.Tensor)
    mapping = str(shm_mapping(obs.data_ptr()))
    assert "/dev/shm/rlm-" not in mapping and "/memfd:rlm-" not in mapping
    obs += 1  # owned and writable
    frame = env.render()
    assert isinstance(frame, torch.Tensor) and tuple(frame.shape) == (6, 8, 3) and frame.dtype == torch.uint8


def test_vector_client_and_a_torch_model_match_numpy() -> None:
    def numpy_policy(obs: np.ndarray) -> int:
        return int(obs[2] + 0.5 * obs[3] > 0)

    def torch_policy(obs: Any) -> Any:
        assert isinstance(obs, torch.Tensor)
        return (obs[2] + 0.5 * obs[3] > 0).to(torch.int64)

    seeds = [0, 3]
    numpy_result = rnp.Model(numpy_policy).run("CartPole-v1", seeds=seeds)
    torch_result = rt.Model(torch_policy).run("CartPole-v1", seeds=seeds)
    summary = [(e.seed, e.steps, e.reward) for e in numpy_result.episodes]
    assert summary == [(e.seed, e.steps, e.reward) for e in torch_result.episodes]


def test_a_torch_vector_client(serve: Any) -> None:
    from tests.envs import TinyVectorEnv

    served = serve(TinyVectorEnv(num_envs=2, limit=3))
    env = served.client(rt.RemoteVectorEnv, copy=False)
    obs, _ = env.reset(seed=[1, 2])
    assert isinstance(obs, torch.Tensor) and tuple(obs.shape) == (2, 3)
    obs, rewards, terms, truncs, _ = env.step(torch.tensor([1, 2]))
    assert obs[:, 2].tolist() == [1.0, 2.0] and terms.dtype == torch.bool


class TorchEnv:
    """An env whose step does torch arithmetic on its action (served with framework="torch")."""

    metadata: dict[str, Any] = {}
    render_mode = None

    def __init__(self) -> None:
        self.observation_space = rlmesh.spaces.Box(-10.0, 10.0, (2,), "float32")
        self.action_space = rlmesh.spaces.Box(-1.0, 1.0, (2,), "float32")
        self.state = torch.zeros(2)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict[str, Any]]:
        self.state = torch.zeros(2)
        return self.state.clone(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        assert isinstance(action, torch.Tensor) and action.dtype == torch.float32, type(action)
        self.state = self.state + action
        return self.state.clone(), float(action.sum()), False, False, {}

    def close(self) -> None:
        pass


def test_env_server_framework_torch_hands_the_env_torch_actions(serve: Any) -> None:
    served = serve(TorchEnv, framework="torch", device="cpu")
    env = served.client(rt.RemoteEnv)
    env.reset(seed=0)
    env.step(torch.tensor([0.5, -0.25]))
    obs, reward, *_ = env.step(np.array([0.5, 0.5], np.float32))
    assert obs.tolist() == [1.0, 0.25] and reward == 1.0


def test_framework_torch_refuses_a_device_it_does_not_have() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA device"):
        rlmesh.EnvServer(TorchEnv, framework="torch", device="cuda:0")
    with pytest.raises(ValueError, match="invalid torch device 'abacus'"):
        rlmesh.EnvServer(TorchEnv, framework="torch", device="abacus")
    with pytest.raises(TypeError, match="torch.device"):
        rlmesh.EnvServer(TorchEnv, framework="torch", device=3)


def test_import_rlmesh_torch_does_not_import_torch() -> None:
    code = "import sys, rlmesh.torch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["False"], out.stderr


def test_a_torch_vector_client_on_the_fast_path_matches_numpy(tmp_path: Any) -> None:
    server = rlmesh.EnvServer(
        "CartPole-v1", f"unix://{tmp_path}/fast.sock", num_envs=3, vectorization_mode="async", workers=1
    ).start()
    try:
        runs = []
        for cls, kwargs in (
            (rnp.RemoteVectorEnv, {}),
            (rt.RemoteVectorEnv, {}),
            (rt.RemoteVectorEnv, {"copy": False}),
        ):
            with cls(server.address, **kwargs) as env:
                rows = [env.reset(seed=4)[0]]
                for t in range(30):
                    rows.append(env.step(np.array([t % 2, 1, 0]))[0])
                runs.append(rows)
        for rows in runs[1:]:
            assert all(isinstance(r, torch.Tensor) and r.dtype == torch.float32 for r in rows)
            assert [r.numpy().tobytes() for r in rows] == [r.tobytes() for r in runs[0]]
    finally:
        server.shutdown()
